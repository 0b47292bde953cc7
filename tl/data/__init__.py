"""Images in: image folders and the shipped sample, the set-up pass and its manifest, folds, transforms,
downloads."""
