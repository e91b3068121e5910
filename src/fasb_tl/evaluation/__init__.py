"""Evaluation: the TruthfulQA protocol, the six multiple-choice tasks, judges and result tables."""
