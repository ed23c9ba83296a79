"""Video in: decoding and probing with PyAV (``decoding``), objects on object storage streamed
for PyAV (``sources``), why a video cannot be read (``failures``) and clip geometry (``clips``).

May import: ``reslstm.storage``, ``reslstm.errors``, ``reslstm.sampling``. Nothing here knows
about models, features or Ray."""
