"""Feature extraction as plain stages (no Ray): ``segments`` (the format between stages),
``settings`` (options -> recorded stream settings), ``stages`` (decode, flow, features) and
``driver`` (planning, the loop into the store writer, and a single-process run)."""
