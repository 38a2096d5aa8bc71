"""unix-cxr: the open, trainable, tested implementation of UniX (arXiv 2601.11522) for chest X-rays."""

__version__ = "0.1.0"
