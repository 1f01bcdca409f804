"""Materialising the embedded model parses its GGUF file once (models.gguf_parsed_once)."""

from __future__ import annotations

import pytest


def test_one_reader_per_file_inside_the_block_and_gguf_restored_after():
    import gguf

    from ptalign_ray.models import embedded_gguf_path, gguf_parsed_once

    before = (gguf.GGUFReader, gguf.get_tensor_name_map)
    path = str(embedded_gguf_path())
    with pytest.raises(RuntimeError, match="stop"), gguf_parsed_once():
        reader = gguf.GGUFReader(path)
        assert gguf.GGUFReader(path) is reader and len(reader.tensors) == 272
        llama = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(llama, 30) is gguf.get_tensor_name_map(llama, 30)
        raise RuntimeError("stop")  # restored on the way out of a failed conversion too
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == before
