"""Trained models: their folder description (card.py), loading them back (load.py), predicting with them."""
