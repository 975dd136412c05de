"""LightGBM inference through its C library, without importing the ``lightgbm`` Python package.

``import lightgbm`` imports pandas, SciPy and scikit-learn when they are installed (they are, for
training and MLflow), which takes a process to about 200 MB before it has done anything. Serving needs
none of that: it loads a model from LightGBM's text format and predicts on a float64 matrix. This
module loads ``lib_lightgbm`` (shipped inside the ``lightgbm`` wheel; located with
``importlib.util.find_spec``, which does not run the package) with ctypes and calls the same C
functions ``lightgbm.Booster`` calls, so predictions are identical to the bit. Training stays in the
worker process with the full Python package.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from pathlib import Path

import numpy as np

from edgeloop.errors import ModelFileError

_DTYPE_FLOAT64 = 1  # C_API_DTYPE_FLOAT64
_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL
_ROW_MAJOR = 1

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def library_path() -> Path:
    """Where ``lib_lightgbm`` is, from the installed ``lightgbm`` package, without importing it."""
    spec = importlib.util.find_spec("lightgbm")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError("LightGBM models need the lightgbm package (pip install lightgbm)")
    for folder in spec.submodule_search_locations:
        for candidate in (Path(folder) / "lib", Path(folder) / "bin", Path(folder).parent):
            for name in ("lib_lightgbm.so", "lib_lightgbm.dylib", "lib_lightgbm.dll"):
                if (candidate / name).is_file():
                    return candidate / name
    raise ModelFileError("cannot find lib_lightgbm in the installed lightgbm package")


def _library() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is None:
            lib = ctypes.cdll.LoadLibrary(str(library_path()))
            lib.LGBM_GetLastError.restype = ctypes.c_char_p
            _lib = lib
        return _lib


def _check(code: int) -> None:
    if code != 0:
        message = _library().LGBM_GetLastError()
        raise ModelFileError(f"LightGBM: {message.decode(errors='replace') if message else 'unknown error'}")


class NativeBooster:
    """A LightGBM model loaded from its text format; :meth:`predict` as ``lightgbm.Booster.predict``."""

    def __init__(self, model_text: str) -> None:
        lib = _library()
        self._handle = ctypes.c_void_p()
        iterations = ctypes.c_int(0)
        _check(
            lib.LGBM_BoosterLoadModelFromString(
                ctypes.c_char_p(model_text.encode()), ctypes.byref(iterations), ctypes.byref(self._handle)
            )
        )
        self.num_iterations = iterations.value
        features = ctypes.c_int(0)
        _check(lib.LGBM_BoosterGetNumFeature(self._handle, ctypes.byref(features)))
        self._num_feature = features.value
        self._text = model_text

    def num_feature(self) -> int:
        return self._num_feature

    def model_to_string(self) -> str:
        return self._text

    def predict(self, X: np.ndarray, num_threads: int = 1) -> np.ndarray:
        """Forecasts for the rows of ``X``; one thread by default (the edge leaves the rest to training)."""
        mat = np.ascontiguousarray(X, dtype=np.float64)
        if mat.ndim != 2 or mat.shape[1] != self._num_feature:
            raise ValueError(f"expected a matrix of {self._num_feature} columns, got shape {mat.shape}")
        out = np.empty(mat.shape[0], dtype=np.float64)
        if mat.shape[0] == 0:
            return out
        written = ctypes.c_int64(0)
        _check(
            _library().LGBM_BoosterPredictForMat(
                self._handle,
                mat.ctypes.data_as(ctypes.c_void_p),
                ctypes.c_int(_DTYPE_FLOAT64),
                ctypes.c_int32(mat.shape[0]),
                ctypes.c_int32(mat.shape[1]),
                ctypes.c_int(_ROW_MAJOR),
                ctypes.c_int(_PREDICT_NORMAL),
                ctypes.c_int(0),
                ctypes.c_int(-1),
                ctypes.c_char_p(f"num_threads={int(num_threads)}".encode()),
                ctypes.byref(written),
                out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
            )
        )
        if written.value != mat.shape[0]:
            raise ModelFileError(f"LightGBM wrote {written.value} predictions for {mat.shape[0]} rows")
        return out

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value and _lib is not None:
            _lib.LGBM_BoosterFree(handle)
            self._handle = ctypes.c_void_p()
