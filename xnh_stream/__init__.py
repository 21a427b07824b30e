"""xnh-stream: near-real-time processing of X-ray holographic nano-tomography (XNH) scans.

The package is the numerical and I/O core (no Ray import): geometry, NXtomo I/O,
simulation, flat-field, distance alignment, phase retrieval, FBP, FSC and the batch
pipeline. Ray actors that wire it into a stream live in the top-level ``actors`` package.
"""

__version__ = "0.1.0"
