"""Video in: decoding and probing with PyAV (``decoding``), objects on object storage streamed
for PyAV (``sources``), why a video cannot be read (``failures``), clip geometry (``clips``) and
where frames and clips sit in time (``timing``: presentation timestamps, a fixed frame rate,
clip spans).

May import: ``reslstm.storage``, ``reslstm.errors``, ``reslstm.sampling``. Nothing here knows
about models, features or Ray."""
