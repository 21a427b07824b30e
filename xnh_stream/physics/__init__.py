"""The physics of XNH: pure functions and small classes on arrays (NumPy, or CuPy through ``xp``).

Geometry (:mod:`.geometry`), flat-field (:mod:`.flatfield`), distance alignment (:mod:`.align`), phase
retrieval (:mod:`.phase`: multi-distance CTF, Paganin), the sample envelope and its projector
(:mod:`.envelope`, :mod:`.projector`), filtered back-projection and the rotation axis (:mod:`.fbp`, with
the compiled CPU / CUDA kernels in :mod:`.backprojection`), full-resolution live slices (:mod:`.slices`),
resolution (:mod:`.fsc`) and dose (:mod:`.dose`). Nothing here reads files, keeps scan state or imports Ray.
"""
