"""The compiler core: tracing, passes and their registry, pipeline text, the pass manager, verification, the decomposed-layer representation."""
