"""RegisterCustomOps against a runtime older than the headers: a clean error status, no crash.

A fake OrtApiBase (ctypes) answers GetApi(23) with NULL, as an ONNX Runtime < 1.23 does, and offers only
CreateStatus (the first entry of OrtApi) at version 1; the library must report both versions through it.
"""

import ctypes

from iceformer.ops import get_library_path

CREATE_STATUS = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)
GET_API = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)
GET_VERSION = ctypes.CFUNCTYPE(ctypes.c_void_p)


class OldApi(ctypes.Structure):
    _fields_ = [("CreateStatus", CREATE_STATUS)]


class ApiBase(ctypes.Structure):
    _fields_ = [("GetApi", GET_API), ("GetVersionString", GET_VERSION)]


def test_runtime_older_than_headers_is_refused_with_a_message():
    seen = {}

    def create_status(code, msg):
        seen["code"], seen["msg"] = code, msg.decode()
        return 0x1234  # any non-null "status"

    create = CREATE_STATUS(create_status)
    old = OldApi(create)

    def get_api(version):
        seen.setdefault("asked", []).append(version)
        return ctypes.addressof(old) if version == 1 else None

    get_api_cb = GET_API(get_api)
    version = ctypes.create_string_buffer(b"1.16.3")
    version_cb = GET_VERSION(lambda: ctypes.addressof(version))
    base = ApiBase(get_api_cb, version_cb)
    lib = ctypes.CDLL(get_library_path())
    lib.RegisterCustomOps.restype = ctypes.c_void_p
    lib.RegisterCustomOps.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    status = lib.RegisterCustomOps(None, ctypes.addressof(base))
    assert status == 0x1234
    assert seen["asked"][0] == 23 and 1 in seen["asked"]
    assert seen["code"] == 1  # ORT_FAIL
    assert "API version 23" in seen["msg"] and "1.16.3" in seen["msg"] and "upgrade onnxruntime" in seen["msg"]
