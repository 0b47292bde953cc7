"""tl: transfer learning for small image datasets as configurable, tracked experiments."""
