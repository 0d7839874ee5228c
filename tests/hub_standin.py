"""A local HTTP server on 127.0.0.1 that stands in for the Hugging Face Hub, for the real
huggingface_hub client (through HF_ENDPOINT): nothing of huggingface_hub is mocked.

It answers the requests huggingface_hub makes (checked against its source:
file_download.py hf_hub_download / get_hf_file_metadata, hf_api.py model_info and
get_safetensors_metadata, utils/_http.py hf_raise_for_status):

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: the model's info
  (its commit ``sha``, ``gated``);
- ``HEAD`` / ``GET /{repo}/resolve/{rev}/{file}``: a file, with ``X-Repo-Commit`` and ``ETag``;
  a ``Range: bytes=a-b`` GET answers 206 with those bytes (safetensors headers);
- errors as the Hub sends them: ``X-Error-Code`` RepoNotFound (404), RevisionNotFound (404),
  EntryNotFound (404, with X-Repo-Commit), GatedRepo (401 without the right token).

Repos (every file built here; safetensors files are real headers: an 8-byte little-endian
length, then the JSON header; the data region is left out, since only headers are read):

- ``test-org/tiny-llama``: a 2-layer Llama, one model.safetensors whose tensors are exactly
  the model's parameters (BF16); revision ``v2`` (another commit) has 3 layers;
- ``test-org/sharded-qwen``: a tied Qwen2, model.safetensors.index.json and two shards;
- ``test-org/fp8-llama``: FP8 weights (F8_E4M3) and ``quantization_config`` fp8;
- ``test-org/remote-llama``: ``auto_map`` (its own modelling code) and model_type llama; its
  checkpoint holds one tensor (10 parameters) that the model does not have;
- ``test-org/no-weights``: a config.json only;
- ``test-org/gated``: 401 GatedRepo unless the request carries ``Bearer hf_granted``;
- ``test-org/slow``: every answer waits ``SLOW_SECONDS`` (a client with a shorter timeout
  times out);
- anything else: 404 RepoNotFound.
"""
from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

GRANTED_TOKEN = "hf_granted"
SLOW_SECONDS = 3.0

TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1000, "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 2048, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
TINY_QWEN = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 1200, "hidden_size": 64,
             "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 4096, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}


def llama_tensors(config: dict) -> dict[str, list[int]]:
    """The parameter names and shapes of a Llama / Qwen2 checkpoint (Qwen2: q/k/v biases;
    a tied lm_head is not stored), as transformers saves them."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d = h // heads
    out = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out |= {p + "self_attn.q_proj.weight": [heads * d, h], p + "self_attn.k_proj.weight": [kv * d, h],
                p + "self_attn.v_proj.weight": [kv * d, h], p + "self_attn.o_proj.weight": [h, heads * d],
                p + "mlp.gate_proj.weight": [i, h], p + "mlp.up_proj.weight": [i, h], p + "mlp.down_proj.weight": [h, i],
                p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h]}
        if config["model_type"] == "qwen2":
            out |= {p + "self_attn.q_proj.bias": [heads * d], p + "self_attn.k_proj.bias": [kv * d],
                    p + "self_attn.v_proj.bias": [kv * d]}
    if not config["tie_word_embeddings"]:
        out["lm_head.weight"] = [v, h]
    return out


BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1}


def safetensors_header(tensors: dict[str, list[int]], dtype_of=lambda name: "BF16") -> bytes:
    """A safetensors file's header: 8-byte little-endian length, then the JSON header with
    each tensor's dtype, shape and data offsets (the data region itself is not included)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors.items():
        dtype = dtype_of(name)
        size = BYTES[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def _commit(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _repos() -> dict:
    """repo -> {"gated": bool, "revisions": {name: (commit, {file: bytes})}}."""
    def js(obj) -> bytes:
        return json.dumps(obj, indent=1).encode()

    llama3 = dict(TINY_LLAMA, num_hidden_layers=3)
    qwen = llama_tensors(TINY_QWEN)
    names = list(qwen)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": {n: qwen[n] for n in names[:half]},
              "model-00002-of-00002.safetensors": {n: qwen[n] for n in names[half:]}}
    index = {"metadata": {"total_size": 0},
             "weight_map": {n: shard for shard, tensors in shards.items() for n in tensors}}
    fp8 = dict(TINY_LLAMA, quantization_config={"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [16, 16]})
    fp8_dtype = (lambda n: "F8_E4M3" if n.endswith("proj.weight") else "BF16")
    remote = dict(TINY_LLAMA, architectures=["MyLlamaForCausalLM"],
                  auto_map={"AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyModel"})
    tiny_files = {"config.json": js(TINY_LLAMA), "model.safetensors": safetensors_header(llama_tensors(TINY_LLAMA))}
    return {
        "test-org/tiny-llama": {"gated": False, "revisions": {
            "main": (_commit("tiny-llama main"), tiny_files),
            "v2": (_commit("tiny-llama v2"), {"config.json": js(llama3),
                                               "model.safetensors": safetensors_header(llama_tensors(llama3))})}},
        "test-org/sharded-qwen": {"gated": False, "revisions": {"main": (_commit("sharded-qwen"), {
            "config.json": js(TINY_QWEN), "model.safetensors.index.json": js(index),
            **{name: safetensors_header(t) for name, t in shards.items()}})}},
        "test-org/fp8-llama": {"gated": False, "revisions": {"main": (_commit("fp8"), {
            "config.json": js(fp8), "model.safetensors": safetensors_header(llama_tensors(TINY_LLAMA), fp8_dtype)})}},
        "test-org/remote-llama": {"gated": False, "revisions": {"main": (_commit("remote"), {
            "config.json": js(remote),
            "model.safetensors": safetensors_header(llama_tensors(TINY_LLAMA) | {"model.extra.weight": [10]}),
            "modeling_my.py": b"raise SystemExit('remote code must never run')\n"})}},
        "test-org/no-weights": {"gated": False, "revisions": {"main": (_commit("no-weights"), {
            "config.json": js(TINY_LLAMA)})}},
        "test-org/gated": {"gated": True, "revisions": {"main": (_commit("gated"), tiny_files)}},
        "test-org/slow": {"gated": False, "slow": True, "revisions": {"main": (_commit("slow"), tiny_files)}},
    }


class HubStandIn:
    """The server: ``url`` for HF_ENDPOINT, ``requests`` lists (method, path, range) served."""

    def __init__(self):
        self.repos = _repos()
        self.requests: list[tuple[str, str, str | None]] = []
        self.slow_seconds = SLOW_SECONDS
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                stand_in.handle(self, head=True)

            def do_GET(self):
                stand_in.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _send(h, status: int, body: bytes = b"", head: bool = False, **headers) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k.replace("_", "-"), v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _error(self, h, status: int, code: str, head: bool, commit: str | None = None) -> None:
        extra = {"X_Repo_Commit": commit} if commit else {}
        self._send(h, status, json.dumps({"error": code}).encode(), head, X_Error_Code=code,
                   X_Error_Message=code, Content_Type="application/json", **extra)

    def handle(self, h, head: bool) -> None:
        path = unquote(h.path.split("?", 1)[0])
        self.requests.append(("HEAD" if head else "GET", path, h.headers.get("Range")))
        parts = path.strip("/").split("/")
        api = parts[:2] == ["api", "models"]
        repo_id = "/".join(parts[2:4] if api else parts[:2])
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", head)
        if repo.get("slow"):
            time.sleep(self.slow_seconds)
        if api:
            revision = parts[5] if len(parts) > 5 and parts[4] == "revision" else "main"
        elif len(parts) >= 5 and parts[2] == "resolve":
            revision = parts[3]
        else:
            return self._error(h, 404, "EntryNotFound", head)
        by_commit = {commit: name for name, (commit, _) in repo["revisions"].items()}
        revision = by_commit.get(revision, revision)
        if revision not in repo["revisions"]:
            return self._error(h, 404, "RevisionNotFound", head)
        commit, files = repo["revisions"][revision]
        if api:
            info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                    "gated": "manual" if repo["gated"] else False,
                    "siblings": [{"rfilename": f} for f in files]}
            return self._send(h, 200, json.dumps(info).encode(), head, Content_Type="application/json")
        if repo["gated"] and h.headers.get("Authorization") != f"Bearer {GRANTED_TOKEN}":
            return self._error(h, 401, "GatedRepo", head)
        filename = "/".join(parts[4:])
        body = files.get(filename)
        if body is None:
            return self._error(h, 404, "EntryNotFound", head, commit)
        etag = f'"{hashlib.sha256(body).hexdigest()}"'
        wanted = h.headers.get("Range")
        if wanted and not head:
            start, _, end = wanted.split("=", 1)[1].partition("-")
            chunk = body[int(start): int(end) + 1 if end else None]
            return self._send(h, 206, chunk, head, X_Repo_Commit=commit, ETag=etag,
                              Content_Range=f"bytes {start}-{int(start) + len(chunk) - 1}/{len(body)}")
        self._send(h, 200, body, head, X_Repo_Commit=commit, ETag=etag)
