"""Text-aware recommendation: items recommended to users from their history, with item text read by a fine-tuned
encoder so that items nobody has interacted with yet can be recommended too (docs/apps/recommend.md)."""
