"""``genmodels serve``: AUTOMATIC1111's HTTP API (``/sdapi/v1``) and a web page over the
generation library (``pipelines.generate``). Needs the ``serve`` extra (FastAPI, uvicorn).

    from genmodels.serve.app import create_app
    from genmodels.serve.config import ServeConfig
    from genmodels.serve.server import ServerThread

    with ServerThread(create_app(ServeConfig(ckpt=Path("model.safetensors")))) as s:
        ...  # http://127.0.0.1:<s.port>/sdapi/v1/txt2img

Files: ``schemas`` (A1111's request/response fields), ``worker`` (the one model, the FIFO
queue, progress, interruption), ``generation`` (request -> library call -> response),
``catalog`` (checkpoints to switch between), ``codec`` (base64 images), ``listing``
(samplers, schedulers), ``middleware`` (body limit, basic auth), ``app`` (routes),
``server`` (uvicorn), ``static/`` (the page).
"""
