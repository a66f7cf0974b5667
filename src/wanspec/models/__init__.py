"""Model execution: Hugging Face causal LMs behind a small forward/rollback interface."""
