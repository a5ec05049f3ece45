"""What a user writes by hand: Starlette + onnxruntime, one endpoint (make bench-serve's baseline)."""
import os

import numpy as np
import onnxruntime as ort
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ort.set_default_logger_severity(3)
sess = ort.InferenceSession(os.environ["BASELINE_MODEL"], providers=["CPUExecutionProvider"])
outputs = [o.name for o in sess.get_outputs()]


async def infer(request: Request) -> JSONResponse:
    body = await request.json()
    feeds = {i["name"]: np.asarray(i["data"], dtype=np.float32).reshape(i["shape"]) for i in body["inputs"]}
    result = sess.run(None, feeds)
    out = [{"name": n, "data": v.tolist() if isinstance(v, np.ndarray) else v} for n, v in zip(outputs, result, strict=True)]
    return JSONResponse({"outputs": out})


app = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])
