"""Using a trained model: predicting images with a model tl logged to MLflow."""
