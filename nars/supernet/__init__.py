"""Weight sharing: one supernet trained once, any sub-network of the space measured zero-shot."""
