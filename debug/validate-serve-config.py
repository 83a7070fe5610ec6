#!/usr/bin/env python3
"""Validate Ray Serve (LLM) config files with Ray's own pydantic (v2) classes.

Usage: debug/validate-serve-config.py CONFIG.yaml [...]; exits 1 at the first invalid
file (printing the pydantic error), 2 when Ray cannot be imported.
Needs: pip install "ray[serve]" pyarrow httpx   (no vLLM, torch or GPU needed;
debug/setup.sh installs them into .venv). Run with .venv/bin/python.

Checks per file:
  1. ray.serve.schema.ServeDeploySchema.model_validate (what `serve run/deploy` do);
  2. unknown keys at file/application level (ServeDeploySchema silently ignores them);
  3. for ray.serve.llm:build_openai_app / build_pd_openai_app applications, the
     builder's own args model (LLMServingArgs / PDServingArgs, which run
     LLMConfig.model_validate with extra="forbid" on each LLM config), plus
     PlacementGroupConfig on each placement_group_config (LLMConfig keeps it as
     a plain dict; only the vLLM engine config validates it) and unknown-key
     checks on deployment_config / ingress_deployment_config against the
     deployment options Serve takes (DeploymentSchema: num_replicas,
     autoscaling_config, name, ray_actor_options, ...), which it would
     otherwise ignore;
  4. every runtime_env (the application's and each LLM config's) with Ray's
     RuntimeEnv class (types: env_vars must be str -> str), plus unknown keys
     (RuntimeEnv accepts any key as a plugin; a typo would be ignored).
Without vLLM/SGLang, Ray's openai_api_models module raises ImportError; it only
holds OpenAI request/response models not used by these arg schemas, so it is
replaced with a stub for validation.
"""
import importlib.util
import logging
import sys
import types

import yaml

OPENAI_MODELS = "ray.llm._internal.serve.core.configs.openai_api_models"
BUILDERS = {
    "ray.serve.llm:build_openai_app": "llm",
    "ray.serve.llm:build_pd_openai_app": "pd",
}


def _stub_openai_models():
    if importlib.util.find_spec("vllm") or importlib.util.find_spec("sglang"):
        return
    from pydantic import BaseModel

    mod = types.ModuleType(OPENAI_MODELS)

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (BaseModel,), {})
        setattr(mod, name, cls)
        return cls

    mod.__getattr__ = __getattr__
    sys.modules[OPENAI_MODELS] = mod


def _unknown(where, d, fields):
    extra = sorted(set(d or {}) - set(fields))
    if extra:
        raise ValueError(f"{where}: unknown keys {extra}")


def validate(path, schema):
    from ray.llm._internal.common.placement import PlacementGroupConfig
    from ray.llm._internal.serve.core.ingress.builder import LLMServingArgs
    from ray.llm._internal.serve.serving_patterns.prefill_decode.builder import (
        PDServingArgs,
    )
    from ray.runtime_env import RuntimeEnv
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema

    def runtime_env(where, env):
        if env is None:
            return
        _unknown(where, env, RuntimeEnv.known_fields)
        RuntimeEnv(**env)

    with open(path) as f:
        doc = yaml.safe_load(f)
    schema.model_validate(doc)
    _unknown("top level", doc, schema.model_fields)
    dep_fields = DeploymentSchema.model_fields
    for i, app in enumerate(doc["applications"]):
        _unknown(f"applications[{i}]", app, ServeApplicationSchema.model_fields)
        runtime_env(f"applications[{i}].runtime_env", app.get("runtime_env"))
        kind = BUILDERS.get(app["import_path"])
        if kind is None:
            continue
        args = app.get("args") or {}
        if kind == "llm":
            LLMServingArgs.model_validate(args)
            llms = [("llm_configs[%d]" % j, c) for j, c in enumerate(args["llm_configs"])]
        else:
            PDServingArgs.model_validate(args)
            llms = [("prefill_config", args["prefill_config"]),
                    ("decode_config", args["decode_config"])]
        _unknown(f"applications[{i}].args.ingress_deployment_config",
                 args.get("ingress_deployment_config"), dep_fields)
        for name, c in llms:
            where = f"applications[{i}].args.{name}"
            if isinstance(c, dict):
                if c.get("placement_group_config") is not None:
                    PlacementGroupConfig.model_validate(c["placement_group_config"])
                _unknown(where + ".deployment_config", c.get("deployment_config"), dep_fields)
                runtime_env(where + ".runtime_env", c.get("runtime_env"))


def main(paths):
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    logging.disable(logging.WARNING)  # "Could not import torch/transformers"
    try:
        _stub_openai_models()
        import ray
        from ray.serve.schema import ServeDeploySchema
    except ImportError as e:
        print(f"cannot import Ray Serve: {e}", file=sys.stderr)
        return 2
    for p in paths:
        try:
            validate(p, ServeDeploySchema)
        except Exception as e:  # pydantic.ValidationError, ValueError, KeyError, TypeError
            print(f"{p}: INVALID (ray {ray.__version__})\n{type(e).__name__}: {e}",
                  file=sys.stderr)
            return 1
        print(f"{p}: ok (ray {ray.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
