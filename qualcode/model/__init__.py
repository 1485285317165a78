"""The machinery the workflow steps share: encoders, the theme classifier, fine-tuning, the
review rule, and what a saved model holds."""
