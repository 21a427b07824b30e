"""The one chain of steps from raw frames to a reconstructed volume and its report."""
