"""Streaming safetensors I/O: read one tensor at a time, write sharded output with a byte budget,
PEFT LoRA adapters, atomic outputs (files and directories), side-file copying and content hashes.
See each module's docstring."""

from safegene.io.atomic import atomic_dir, atomic_file, remove_stale_temps, write_text_atomic
from safegene.io.lora import AdapterWriter, LoraAdapter, lora_scaling, read_adapter
from safegene.io.outdir import (
    MODEL_SIDE_FILES,
    atomic_output_dir,
    check_output_path,
    copy_side_files,
    hash_model_dir,
    matches_hash,
)
from safegene.io.reader import ModelReader, find_weight_files
from safegene.io.safetensors_format import TensorEntry, all_finite, read_header, read_tensor
from safegene.io.workspace import Workspace
from safegene.io.writer import (
    DEFAULT_SHARD_BYTES,
    ShardWriter,
    SpooledWriter,
    parse_size,
    plan_shards,
    save_tensors,
)

__all__ = [
    "AdapterWriter",
    "DEFAULT_SHARD_BYTES",
    "LoraAdapter",
    "MODEL_SIDE_FILES",
    "ModelReader",
    "ShardWriter",
    "SpooledWriter",
    "TensorEntry",
    "Workspace",
    "all_finite",
    "atomic_dir",
    "atomic_file",
    "atomic_output_dir",
    "check_output_path",
    "copy_side_files",
    "find_weight_files",
    "hash_model_dir",
    "lora_scaling",
    "matches_hash",
    "parse_size",
    "plan_shards",
    "read_adapter",
    "read_header",
    "read_tensor",
    "remove_stale_temps",
    "save_tensors",
    "write_text_atomic",
]
