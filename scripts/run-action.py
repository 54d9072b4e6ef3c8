#!/usr/bin/env python3
"""Run a composite GitHub action's steps here, the way a runner does, for the install tests.

    python3 scripts/run-action.py ACTION.yml [INPUT=VALUE ...]

Inputs not given take their defaults; `${{ inputs.NAME }}` is substituted in each step's env,
run and name (any other expression is an error: the action must not need a runner's context).
Each `run:` step runs as GitHub's `shell: bash` does (bash --noprofile --norc -eo pipefail),
with GITHUB_ACTION_PATH, GITHUB_OUTPUT, GITHUB_ENV and GITHUB_PATH files handled between steps.
RUNNER_TEMP and the other GITHUB_* variables come from the caller's environment. Prints the
action's outputs as JSON on stdout; exits with the first failing step's code.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

EXPR = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


def read_kv(path):
    """GITHUB_OUTPUT / GITHUB_ENV lines: NAME=VALUE or NAME<<DELIM ... DELIM."""
    out, lines = {}, open(path).read().splitlines() if os.path.exists(path) else []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            j = lines.index(delim, i + 1)
            out[name] = "\n".join(lines[i + 1 : j])
            i = j + 1
            continue
        if "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
        i += 1
    return out


def main():
    action_file = os.path.abspath(sys.argv[1])
    action = yaml.safe_load(open(action_file))
    inputs = {k: str(v.get("default", "")) for k, v in (action.get("inputs") or {}).items()}
    for arg in sys.argv[2:]:
        k, v = arg.split("=", 1)
        if k not in inputs:
            sys.exit(f"run-action: the action has no input {k}")
        inputs[k] = v

    def expand(text, outputs=None):
        def sub(m):
            e = m.group(1)
            if e.startswith("inputs."):
                return inputs[e[len("inputs."):]]
            if outputs is not None and e.startswith("steps."):
                _, sid, _, name = e.split(".", 3)
                return outputs.get(sid, {}).get(name, "")
            raise SystemExit(f"run-action: unsupported expression ${{{{ {e} }}}}")
        return EXPR.sub(sub, str(text))

    work = tempfile.mkdtemp(prefix="run-action-")
    base_env = dict(os.environ)
    extra_path, extra_env, step_outputs = [], {}, {}
    path_file, env_file = os.path.join(work, "path"), os.path.join(work, "env")
    for n, step in enumerate(action["runs"]["steps"]):
        if "run" not in step:
            sys.exit(f"run-action: step {n} is not a run step")
        if step.get("shell", "bash") != "bash":
            sys.exit(f"run-action: step {n}: only shell bash")
        env = dict(base_env)
        env.update(extra_env)
        env.update({k: expand(v) for k, v in (step.get("env") or {}).items()})
        env["PATH"] = ":".join(list(reversed(extra_path)) + [base_env["PATH"]])
        out_file = os.path.join(work, f"output-{n}")
        open(out_file, "w").close()
        open(path_file, "w").close()
        open(env_file, "w").close()
        env.update(GITHUB_ACTION_PATH=os.path.dirname(action_file), GITHUB_OUTPUT=out_file, GITHUB_PATH=path_file, GITHUB_ENV=env_file)
        script = os.path.join(work, f"step-{n}.sh")
        open(script, "w").write(expand(step["run"], step_outputs))
        print(f"run-action: {expand(step.get('name', f'step {n}'))}", file=sys.stderr, flush=True)
        rc = subprocess.call(["bash", "--noprofile", "--norc", "-eo", "pipefail", script], env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr)
        if rc != 0:
            print(f"run-action: step {n} exited {rc}", file=sys.stderr)
            sys.exit(rc)
        if step.get("id"):
            step_outputs[step["id"]] = read_kv(out_file)
        extra_path += [p for p in open(path_file).read().splitlines() if p]
        extra_env.update(read_kv(env_file))
    outputs = {k: expand(v["value"], step_outputs) for k, v in (action.get("outputs") or {}).items()}
    json.dump({"outputs": outputs, "env": extra_env}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
