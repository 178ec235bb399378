"""Storage of :class:`~mmquant.core.Encoded` records: the ``.mmq`` file format.

An ``.mmq`` file is a `safetensors <https://github.com/huggingface/safetensors>`_ file. It holds
one or more *named* matrices; for each matrix ``NAME`` the tensors are

* ``NAME/codes``       -- the packed codes or entropy-coded bitstream (``uint8``, 1-D),
* ``NAME/side/KEY``    -- each side-information array, in its stored dtype and shape.

Dtypes that safetensors' numpy API does not know (bfloat16, float8 ... from ``ml_dtypes``, big-endian
arrays are converted to little-endian first) are written as their raw bytes in a 1-D ``uint8``
tensor, with the dtype name and shape kept in the header; their byte count is unchanged. The string
metadata of the safetensors header holds a single key, ``"mmquant"``, whose value is a JSON header::

    {"magic": "mmquant", "format_version": 4, "library_version": "0.1.0",
     "matrices": {NAME: {"spec": ..., "shape": [...], "seed": ..., "stats": {...},
                         "arrays": {TENSOR: {"dtype": ..., "shape": [...], "raw": bool,
                                             "crc32": int}}}},
     "header_crc32": int}

``crc32`` is :func:`zlib.crc32` of the stored bytes of each array, ``header_crc32`` that of the
canonical JSON of the header without that field. Tensors are stored back to back without padding
(the safetensors header is padded to a multiple of 8 bytes), so

    file size = 8 + header length + Σ encoded.nbytes       (exactly; see :func:`read_info`),

i.e. the payload of a matrix is exactly the ``nbytes`` its ``bits_per_entry`` counts. Writing is
deterministic: the same records give byte-identical files.

API::

    mq.save("w.mmq", q.encode(W))                      # one matrix, stored under the name "x"
    mq.save("ab.mmq", {"A": enc_a, "B": enc_b})        # several named matrices
    enc = mq.load_one("w.mmq")                         # the only matrix of a file
    enc_b = mq.load_one("ab.mmq", "B")                 # or one by name
    recs = mq.load("ab.mmq")                           # dict name -> Encoded, in saved order
    info = mq.io.read_info("ab.mmq")                   # header only: specs, shapes, bits/entry
    W_hat = mq.get(enc.spec).decode(enc)               # bit-identical to decoding the original

Reading treats every file as hostile and raises :class:`FormatError` (a ``ValueError``) naming the
problem -- not a safetensors file or truncated, a header over :data:`HEADER_MAX_BYTES` or nested
deeper than :data:`JSON_MAX_DEPTH`, wrong magic, unknown format version, header JSON damaged or of
the wrong structure (every field's type is checked; dtypes are limited to numeric ones), a CRC
mismatch, a missing or unexpected array, an unknown spec -- and, before any decoder runs, checks
every record against its quantizer (:meth:`mmquant.core.Quantizer.check`: a valid shape, at least
one stored byte per 1024 entries, the exact code length, side arrays and seed its spec declares).
With ``verify=True`` (the default) it also decodes each matrix once to check that the decoder
accepts the stored values and returns a finite array of the header's shape. A damaged file never
loads silently, and a crafted one never makes a decoder read outside its buffers.
"""

from mmquant.io.header import (
    DEFAULT_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEADER_MAX_BYTES,
    JSON_MAX_DEPTH,
    READABLE_VERSIONS,
    FileInfo,
    FormatError,
    MatrixInfo,
    read_info,
)
from mmquant.io.read import load, load_one
from mmquant.io.write import save

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "DEFAULT_NAME",
    "HEADER_MAX_BYTES",
    "JSON_MAX_DEPTH",
    "FormatError",
    "FileInfo",
    "MatrixInfo",
    "save",
    "load",
    "load_one",
    "read_info",
]
