"""Evaluation stage: Dice, HD95 and volumes of predicted masks against references, with plots and reports."""
