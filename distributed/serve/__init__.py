"""The Ray Serve application (``app``): classify a video over HTTP with a trained model.

``app`` the deployment, its routes and batching; ``access`` the token and the locations a
request may name; ``request_body`` what a request carries (uploads, forms, JSON) and its 4xx
answers.

May import: ``reslstm``, ``reslstm.distributed.runtime``, ``reslstm.distributed.predict``."""
