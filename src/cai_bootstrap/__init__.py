"""cai-bootstrap: turn a base language model into an instruction follower, with every spec clause checked."""

__version__ = "0.1.0"
