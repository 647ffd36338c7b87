"""An ONNX file read once and memory-mapped: the graph's structure parsed by onnx, the weights left in the file.

`onnx.load` copies every initializer's bytes into Python objects, and `numpy_helper.to_array` copies them again:
for an OPUS-MT-size export, four graph files of 210-235 MB each, that is gigabytes of copies. Here the file is
mapped and walked at the protobuf wire level (ModelProto.graph = field 7, GraphProto.initializer = field 5,
TensorProto dims = 1, data_type = 2, name = 8, raw_data = 9, data_location = 14); onnx parses everything but
the initializers, and each initializer with raw little-endian data becomes a read-only numpy view of the file.
Any other initializer (external data, typed data fields) is parsed by onnx and converted as usual.
"""
import mmap
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

_GRAPH, _INITIALIZER = 7, 5                                        # ModelProto.graph, GraphProto.initializer
_DIMS, _DATA_TYPE, _NAME, _RAW_DATA, _DATA_LOCATION = 1, 2, 8, 9, 14  # TensorProto fields
_RAW_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
               onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8,
               onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64}


def _varint(buf, pos):  # -> (value, position after it)
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("a varint runs past the end of the data")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start, end):
    """The protobuf fields in buf[start:end] -> (field number, wire type, tag start, value start, value end);
    for a varint the value is buf[value start:value end] still encoded."""
    pos = start
    while pos < end:
        tag_start = pos
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, value_end = _varint(buf, pos)
        elif wire == 1:
            value_end = pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value_end = pos + length
        elif wire == 5:
            value_end = pos + 4
        else:
            raise ValueError(f"wire type {wire} at byte {tag_start}")
        if value_end > end:
            raise ValueError(f"field {field} at byte {tag_start} runs past the end of its message")
        yield field, wire, tag_start, pos, value_end
        pos = value_end


class MappedInitializer:
    """An initializer whose raw data stays in the mapped file: name, data_type and dims as onnx.TensorProto has
    them, and `to_array()` a read-only view (no copy)."""

    def __init__(self, name, data_type, dims, buffer, offset, n_bytes):
        self.name, self.data_type, self.dims = name, data_type, dims
        self._buffer, self._offset, self._n_bytes = buffer, offset, n_bytes

    def to_array(self):
        dtype = np.dtype(_RAW_DTYPES[self.data_type])
        count = int(np.prod(self.dims, dtype=np.int64))
        if count * dtype.itemsize != self._n_bytes:
            raise ValueError(f"{self._n_bytes} bytes of data for shape {list(self.dims)} of {dtype}")
        return np.frombuffer(self._buffer, dtype=dtype, count=count, offset=self._offset).reshape(self.dims)


def _initializer(buf, start, end, base_dir):
    """One TensorProto -> a MappedInitializer when its data is raw bytes in the file, else the parsed TensorProto
    (numpy_helper.to_array reads it, external data included)."""
    name, data_type, dims, raw, location, others = "", 0, [], None, 0, False
    for field, wire, _, value_start, value_end in _fields(buf, start, end):
        if field == _DIMS and wire == 0:
            dims.append(_varint(buf, value_start)[0])
        elif field == _DIMS and wire == 2:  # packed
            pos = value_start
            while pos < value_end:
                dim, pos = _varint(buf, pos)
                dims.append(dim)
        elif field == _DATA_TYPE:
            data_type = _varint(buf, value_start)[0]
        elif field == _NAME:
            name = bytes(buf[value_start:value_end]).decode("utf-8")
        elif field == _RAW_DATA:
            raw = (value_start, value_end - value_start)
        elif field == _DATA_LOCATION:
            location = _varint(buf, value_start)[0]
        else:
            others = True
    if raw is None or others or location != 0 or data_type not in _RAW_DTYPES or sys.byteorder != "little":
        return ParsedInitializer(onnx.TensorProto.FromString(bytes(buf[start:end])), base_dir)
    return MappedInitializer(name, data_type, dims, buf, *raw)


class ParsedInitializer:
    """A TensorProto that onnx converts (typed data fields, external data), with MappedInitializer's interface."""

    def __init__(self, tensor, base_dir):
        self.tensor, self.base_dir = tensor, base_dir
        self.name, self.data_type, self.dims = tensor.name, tensor.data_type, list(tensor.dims)

    def to_array(self):
        return numpy_helper.to_array(self.tensor, self.base_dir)


def read_model(path):
    """-> (onnx.ModelProto without its top-level initializers, {name: initializer with .to_array()}).

    Raises OSError for an unreadable file and ValueError (or onnx's DecodeError) for a damaged one."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ValueError("the file is empty")
        # every page is read (weights used or compared): mapped in one go rather than fault by fault
        buf = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ)
    view = memoryview(buf)
    base_dir = os.path.dirname(path)
    model_parts, initializers = [], {}
    for field, wire, tag_start, value_start, value_end in _fields(view, 0, size):
        if field != _GRAPH or wire != 2:
            model_parts.append(view[tag_start:value_end])
            continue
        graph_parts = []
        for g_field, g_wire, g_tag, g_start, g_end in _fields(view, value_start, value_end):
            if g_field == _INITIALIZER and g_wire == 2:
                init = _initializer(view, g_start, g_end, base_dir)
                initializers[init.name] = init
            else:
                graph_parts.append(view[g_tag:g_end])
        graph = b"".join(graph_parts)
        model_parts.append(_tag_and_length(_GRAPH, len(graph)) + graph)
    return onnx.ModelProto.FromString(b"".join(model_parts)), initializers


def _tag_and_length(field, length):  # the header of a length-delimited field
    out = bytearray()
    for value in ((field << 3) | 2, length):
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)
