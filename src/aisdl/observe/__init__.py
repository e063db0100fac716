"""What the node shows of itself: its accounting for metrics."""
