"""A GPU session in one command per part: pack what the machine needs, run the plan, keep every result.

    python -m recon.session pack experiments/sessions/gpu.yaml --output session_pack   # here: at most 64 MiB
    python -m recon.session plan session_pack                                          # the parts and budgets
    python -m recon.session run session_pack --part 1 --results results/               # there: each part one command
    python -m recon.session run session_pack --part 1 --results results/ --archive $OUT/part1.tgz   # on a lent machine
    python -m recon.session summary results/                                           # every part in results/summary.md

A plan (YAML) names what to pack (the encoder, stored in fp16 or int8 and restored to fp32 at
unpacking, and text files, gzipped), the train.py flags every run shares (`base`) and a list of `parts`. Each
part is one command of at most `limit_s` seconds (the plan's parts add up to at most
`budget_s`): its `runs` (train.py flags over `base`), `parallel` of them side by side on one
device, each stopped by SIGTERM (a checkpoint is saved) when the part's time is up; or a
`side_by_side` check, the same short runs one after another and then all at once, timed; and/or
`commands` (shell lines such as the benchmark, with {results}, {encoder}, {python}, {pack:NAME}
filled in). A data
path written `pack:NAME` is the packed file NAME. A run that has already finished in the results
folder is skipped, so a part that was cut short can be run again.

Everything a part writes goes under --results/<part>/: per run the train.py log, metrics.jsonl,
meta.json and the evaluation folders (weights only with --keep-weights), part.json with the
timings, the device and the commands, and summary.md: the runs' figures beside their controls and
the tables the commands printed.
"""

import argparse
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import torch
import yaml

from recon.errors import ReconError, print_error

MiB = 2 ** 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SessionError(ReconError):
    pass


def load_plan(path):
    with open(path) as f:
        plan = yaml.safe_load(f)
    if not isinstance(plan, dict) or not plan.get("parts"):
        raise SessionError(f"{path}: a plan needs `parts` (see recon/session.py)")
    budget, limit = plan.get("budget_s", 1500), plan.get("command_limit_s", 600)
    total = 0
    for i, part in enumerate(plan["parts"], start=1):
        if not part.get("name") or not (part.get("runs") or part.get("side_by_side") or part.get("commands")):
            raise SessionError(f"{path}: part {i} needs a name and `runs`, `side_by_side` or `commands`")
        if not 0 < part.get("limit_s", 0) <= limit:
            raise SessionError(f"{path}: part {part['name']!r} needs limit_s in (0, {limit}] (one command), "
                               f"not {part.get('limit_s')}")
        total += part["limit_s"]
    if total > budget:
        raise SessionError(f"{path}: the parts' limits add up to {total} s, over the plan's budget_s {budget}")
    return plan


# ----------------------------------------------------------------------------------------------
# packing (here) and unpacking (there)


SCALE = ".int8_scale"  # suffix of the per-row scale that travels beside an int8 matrix
WEIGHTS = ("fp16", "int8")


def shrink(tensors, weights="fp16"):
    """The encoder's weights as they travel: fp16 halves every float tensor; int8 stores each matrix
    (embeddings, linear weights) as int8 with one fp32 scale per row (its largest |value| / 127), the
    rest in fp16: about a quarter of fp32."""
    out = {}
    for name, v in tensors.items():
        if not v.is_floating_point():
            out[name] = v
        elif weights == "int8" and v.dim() == 2:
            scale = v.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127  # (rows, 1)
            out[name] = (v.float() / scale).round().clamp(-127, 127).to(torch.int8)
            out[name + SCALE] = scale
        else:
            out[name] = v.half()
    return {k: t.contiguous() for k, t in out.items()}


def restore(tensors):
    """shrink's output back to fp32 (int8 matrices times their row scales)."""
    out = {}
    for name, v in tensors.items():
        if name.endswith(SCALE):
            continue
        out[name] = v.float() * tensors[name + SCALE] if name + SCALE in tensors else \
            (v.float() if v.is_floating_point() else v)
    return out


def tree_bytes(root=ROOT, leave_out=()):
    """What travels to a lent machine beside a carried pack: the repository's tracked files and the
    untracked ones git does not ignore (0 outside git), less any under the folders `leave_out`."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                               capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    skip = tuple(os.path.abspath(p) + os.sep for p in leave_out)
    paths = (os.path.abspath(os.path.join(root, n)) for n in names.decode().split("\0") if n)
    return sum(os.path.getsize(p) for p in set(paths) if os.path.isfile(p) and not p.startswith(skip))


def pack(plan_path, output, limit_mib=64, weights=None, log=print):
    """Write the pack folder: plan.yaml, encoder/ (fp16 or int8 safetensors and tokenizer), data/*.gz.
    limit_mib bounds what travels to a lent machine: the pack and the repository's files (tree_bytes).
    weights: fp16 or int8 (default: the plan's `pack: weights`, else fp16)."""
    from safetensors.torch import load_file, save_file

    from recon.encoder import resolve_encoder
    plan = load_plan(plan_path)
    spec = plan.get("pack", {})
    weights = weights or spec.get("weights", "fp16")
    if weights not in WEIGHTS:
        raise SessionError(f"weights {weights!r}: use one of {', '.join(WEIGHTS)}")
    tmp = output.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "data"))
    if spec.get("encoder"):
        source = resolve_encoder(spec["encoder"])
        path = os.path.join(source, "model.safetensors")
        if not os.path.isfile(path):
            raise SessionError(f"{source}: no model.safetensors to pack")
        os.makedirs(os.path.join(tmp, "encoder"))
        save_file(shrink(load_file(path), weights), os.path.join(tmp, "encoder", f"model.{weights}.safetensors"),
                  metadata={"format": "pt"})
        for name in os.listdir(source):
            if name.endswith((".json", ".txt", ".model")) and os.path.isfile(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), os.path.join(tmp, "encoder", name))
    for path in spec.get("data", []):
        if not os.path.isfile(path):
            raise SessionError(f"{path}: no such file to pack (build it first; see the plan's comments)")
        with open(path, "rb") as src, gzip.open(os.path.join(tmp, "data", os.path.basename(path) + ".gz"), "wb",
                                                 compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)
    shutil.copy(plan_path, os.path.join(tmp, "plan.yaml"))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs)
    tree = tree_bytes(leave_out=(output, tmp))
    if size + tree > limit_mib * MiB:
        shutil.rmtree(tmp)
        raise SessionError(f"the pack would be {size / MiB:.1f} MiB and the repository's files are "
                           f"{tree / MiB:.1f} MiB: {(size + tree) / MiB:.1f} MiB would travel, over --limit-mib "
                           f"{limit_mib}: pack the encoder in int8 (--weights int8), or less text")
    shutil.rmtree(output, ignore_errors=True)
    os.rename(tmp, output)
    log(f"packed {output}: {size / MiB:.1f} MiB, encoder weights in {weights}; with the repository's files "
        f"{(size + tree) / MiB:.1f} MiB would travel (limit {limit_mib} MiB)")
    return size


def unpack(pack_dir, work):
    """The pack's encoder (fp32 again) and texts in `work`; returns {name: path} of the data files."""
    from safetensors.torch import load_file, save_file
    os.makedirs(work, exist_ok=True)
    enc = os.path.join(pack_dir, "encoder")
    if os.path.isdir(enc) and not os.path.exists(os.path.join(work, "encoder", "model.safetensors")):
        tmp = os.path.join(work, "encoder.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        packed = [n for n in os.listdir(enc) if n.endswith(".safetensors")]
        save_file(restore(load_file(os.path.join(enc, packed[0]))), os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        for name in os.listdir(enc):
            if not name.endswith(".safetensors"):
                shutil.copy(os.path.join(enc, name), os.path.join(tmp, name))
        os.rename(tmp, os.path.join(work, "encoder"))
    files = {}
    for name in sorted(os.listdir(os.path.join(pack_dir, "data"))):
        target = os.path.join(work, name[:-3])
        if not os.path.exists(target):
            with gzip.open(os.path.join(pack_dir, "data", name), "rb") as src, open(target + ".tmp", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.rename(target + ".tmp", target)
        files[name[:-3]] = target
    return files


# ----------------------------------------------------------------------------------------------
# running a part


def train_argv(flags, files, work):
    argv = []
    for key, value in flags.items():
        if key == "encoder" and value == "pack":
            value = os.path.join(work, "encoder")
        if isinstance(value, str) and value.startswith("pack:"):
            if value[5:] not in files:
                raise SessionError(f"{value}: the pack holds no such file (it holds {sorted(files)})")
            value = files[value[5:]]
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    return argv


def launch(flags, files, work, run_dir, log_path):
    argv = [sys.executable, os.path.join(ROOT, "train.py"), *train_argv(flags, files, work), "--output-dir", run_dir]
    if os.path.isdir(run_dir) and any(n.startswith("checkpoint-") for n in os.listdir(run_dir)):
        argv.append("--resume")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = open(log_path, "a")
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT), argv, out


def finished(run_dir):
    return any(os.path.isfile(os.path.join(run_dir, d, "metrics.json")) for d in ("eval-test", "eval-validation"))


def run_all(jobs, parallel, deadline, log, eval_s=90):
    """jobs: list of (name, flags, run_dir, log_path, files, work); at most `parallel` at once. Each
    run gets --time-limit: it stops training `eval_s` before the deadline and evaluates; at the
    deadline itself a run still going gets SIGTERM (train.py saves a checkpoint and exits).
    Returns {name: record}."""
    pending, running, records = list(jobs), [], {}
    while pending or running:
        while pending and len(running) < parallel:
            name, flags, run_dir, log_path, files, work = pending.pop(0)
            if finished(run_dir):
                records[name] = {"status": "already finished"}
                continue
            limit = round(max(10.0, deadline - time.time() - eval_s))
            proc, argv, out = launch({**flags, "time_limit": limit}, files, work, run_dir, log_path)
            running.append((name, proc, out, time.time()))
            records[name] = {"command": " ".join(argv)}
            log(f"started {name}")
        time.sleep(0.5)
        for item in list(running):
            name, proc, out, t0 = item
            if proc.poll() is None and time.time() > deadline:
                proc.send_signal(signal.SIGTERM)
                records[name]["stopped_at_limit"] = True
                proc.wait(timeout=120)
            if proc.poll() is not None:
                out.close()
                running.remove(item)
                records[name].update(returncode=proc.returncode, seconds=round(time.time() - t0, 1))
                log(f"{name}: exit {proc.returncode} after {records[name]['seconds']} s")
        if not running and pending and time.time() > deadline:
            for name, *_ in pending:
                records[name] = {"status": "not started: the part's time was up"}
            pending = []
    return records


def collect(run_dir, dest, keep_weights):
    """What a run wrote, less its weights (unless asked): logs, meta, evaluations."""
    os.makedirs(dest, exist_ok=True)
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name.startswith("eval-") and os.path.isdir(path):
            shutil.copytree(path, os.path.join(dest, name), dirs_exist_ok=True)
        elif name in ("metrics.jsonl", "data.json", "train.log"):
            shutil.copy(path, dest)
    from recon.checkpoint import list_checkpoints
    steps = list_checkpoints(run_dir)
    if steps:
        last = os.path.join(run_dir, f"checkpoint-{steps[-1]}")
        shutil.copy(os.path.join(last, "meta.json"), dest)
        if keep_weights:
            shutil.copytree(last, os.path.join(dest, f"checkpoint-{steps[-1]}"), dirs_exist_ok=True)


def device_info():
    import torch
    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _fmt(x, digits=2):
    return "" if x is None else f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x)


def _readable(line):
    return line.rsplit("\r", 1)[-1].rstrip()  # a progress bar's last state


def part_summary(folder):
    """One part's results as Markdown: each run's training and test figures beside its controls,
    the side-by-side timing, each command's status and the tables its log printed."""
    with open(os.path.join(folder, "part.json")) as f:
        record = json.load(f)
    device = record.get("device", {})
    lines = [f"## {os.path.basename(folder)}: {record.get('seconds')} s of {record.get('limit_s')} s "
             f"({device.get('gpu') or 'CPU'}, torch {device.get('torch')})", ""]
    runs = [n for n in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, n, "train.log"))]
    if runs:
        lines += ["| run | status | steps (of schedule) | s to the last step, set-up included | validation loss "
                  "| test sentences | BLEU | token F1 | exact match % | cosine (std.) "
                  "| control BLEU: random / shuffled / retrieval |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name in runs:
            meta_path, status = os.path.join(folder, name, "meta.json"), record.get("runs", {}).get(name, {})
            meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
            status = status.get("status") or status.get("returncode", "")
            status = "finished" if status == 0 else status
            if meta.get("stopped_at_time_limit"):
                status = f"{status}, stopped at its time limit"
            evals = sorted(n for n in os.listdir(os.path.join(folder, name)) if n.startswith("eval-"))
            m = {}
            if evals and os.path.exists(os.path.join(folder, name, evals[0], "metrics.json")):
                m = json.load(open(os.path.join(folder, name, evals[0], "metrics.json")))
            controls = " / ".join(_fmt(m.get(f"control_{c}_bleu")) or "-" for c in ("random", "shuffled", "retrieval"))
            lines.append(f"| {name} | {status} | {_fmt(meta.get('step'))} ({_fmt(meta.get('max_steps'))}) | "
                         f"{_fmt(meta.get('train_seconds'), 0)} | {_fmt(meta.get('val_loss'), 3)} | "
                         f"{_fmt(m.get('num_examples')) or 'not evaluated'} | {_fmt(m.get('bleu'))} | "
                         f"{_fmt(m.get('token_f1'))} | {_fmt(m.get('exact_match'))} | "
                         f"{_fmt(m.get('cosine_standardized'), 3)} | {controls if m else ''} |")
        lines.append("")
    shared = record.get("side_by_side")
    if shared:
        lines += [f"Side by side: one after another {shared['one after another']['seconds']} s, all at once "
                  f"{shared['side by side']['seconds']} s ({shared.get('speedup')}x).", ""]
    for i, (command, r) in enumerate(record.get("commands", {}).items(), start=1):
        code = r.get("returncode")
        lines += [f"Command {i} ({'exit 0' if code == 0 else code}, {r.get('seconds')} s): `{command}`", ""]
        log_path = os.path.join(folder, f"command-{i}.log")
        if os.path.exists(log_path):
            text = [_readable(x) for x in open(log_path, errors="replace", newline="").read().split("\n")]
            text = [x for x in text if x.strip()]
            table = [x for x in text if x.startswith("|")]
            lines += (table or (["```", *text[-5:], "```"] if text else [])) + [""]  # a table, else the log's end
    return "\n".join(lines)


def summarize(results, log=print):
    """Every part folder under `results` (N-name, part.json inside) in one summary.md there."""
    parts = sorted((n for n in os.listdir(results) if os.path.isfile(os.path.join(results, n, "part.json"))),
                   key=lambda n: int(n.split("-", 1)[0]) if n.split("-", 1)[0].isdigit() else 0)
    if not parts:
        raise SessionError(f"{results} holds no part folders (N-name/part.json): run a part, or unpack its "
                           "archive there first (tar xzf partN.tgz -C RESULTS)")
    text = "# Session results\n\n" + "\n".join(part_summary(os.path.join(results, n)) for n in parts)
    path = os.path.join(results, "summary.md")
    with open(path, "w") as f:
        f.write(text)
    log(f"summary of {len(parts)} parts in {path}")
    return text


def archive_folder(folder, path, log=print):
    """folder as one .tar.gz at path (a lent machine returns a few files of at most 16 MiB, two
    folders down: one archive per part comes back whole)."""
    import tarfile
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tarfile.open(path + ".tmp", "w:gz") as tar:
        tar.add(folder, arcname=os.path.basename(folder.rstrip("/")))
    os.replace(path + ".tmp", path)
    size = os.path.getsize(path)
    log(f"archived {folder} as {path}: {size / MiB:.1f} MiB" +
        (" (over the 16 MiB a lent machine returns in one file: keep fewer results)" if size > 16 * MiB else ""))
    return size


def run_part(pack_dir, number, results, work=None, keep_weights=False, archive=None, log=print):
    plan = load_plan(os.path.join(pack_dir, "plan.yaml"))
    if not 1 <= number <= len(plan["parts"]):
        raise SessionError(f"--part must be 1 to {len(plan['parts'])}, not {number}")
    part = plan["parts"][number - 1]
    t0 = time.time()
    deadline = t0 + part["limit_s"] - part.get("reserve_s", 30)  # time to collect and to copy back
    work = work or os.path.join(pack_dir, "work")
    files = unpack(pack_dir, work)
    out = os.path.join(results, f"{number}-{part['name']}")
    os.makedirs(out, exist_ok=True)
    base = plan.get("base", {})
    record = {"part": part["name"], "device": device_info(), "limit_s": part["limit_s"], "runs": {}}
    if part.get("runs"):
        jobs = []
        for flags in part["runs"]:
            name = flags.get("run_name") or "run"
            run_dir = os.path.join(work, "runs", part["name"], name)
            os.makedirs(run_dir, exist_ok=True)
            jobs.append((name, {**base, **flags}, run_dir, os.path.join(run_dir, "train.log"), files, work))
        record["parallel"] = part.get("parallel", 1)
        record["runs"] = run_all(jobs, record["parallel"], deadline, log, part.get("eval_s", 90))
        for name, _, run_dir, *_ in jobs:
            collect(run_dir, os.path.join(out, name), keep_weights)
    if part.get("side_by_side"):
        record["side_by_side"] = side_by_side(part["side_by_side"], base, files, work, out, deadline, log)
    for i, command in enumerate(part.get("commands", []), start=1):
        record.setdefault("commands", {})[command] = run_command(command, files, work, out, i, deadline, log)
    record["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(out, "part.json"), "w") as f:
        json.dump(record, f, indent=2)
    try:  # travels in the part's archive; a summary that fails loses nothing the part wrote
        text = part_summary(out)
        with open(os.path.join(out, "summary.md"), "w") as f:
            f.write(text)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log(f"summary.md not written ({type(e).__name__}: {e}); the part's files are intact")
    log(f"part {number} ({part['name']}) done in {record['seconds']} s; results in {out}")
    if archive:
        archive_folder(out, archive, log)
    return record


def run_command(command, files, work, out, number, deadline, log):
    """One shell command of the plan ({results}, {encoder}, {work}, {python} and {pack:NAME} filled in),
    its output in command-N.log, killed at the part's deadline. {work} holds the runs of earlier parts
    of the same session (runs/PART/RUN), so a command can read what they trained."""
    for name, path in files.items():
        command = command.replace("{pack:" + name + "}", path)
    command = command.replace("{results}", out).replace("{encoder}", os.path.join(work, "encoder")) \
        .replace("{work}", work).replace("{python}", sys.executable)
    # a script under benchmarks/ imports recon from the repository, installed there or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    t0 = time.time()
    with open(os.path.join(out, f"command-{number}.log"), "w") as f:
        try:
            code = subprocess.run(command, shell=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                  timeout=max(1.0, deadline - t0)).returncode
        except subprocess.TimeoutExpired:
            code = "stopped at the part's limit"
    log(f"command {number}: {code} after {time.time() - t0:.0f} s")
    return {"returncode": code, "seconds": round(time.time() - t0, 1)}


def side_by_side(spec, base, files, work, out, deadline, log):
    """The same `count` runs one after another, then all at once: does sharing one device finish sooner?"""
    count, flags = spec.get("count", 3), {**base, **spec.get("flags", {}), "no_eval": True}
    timings = {}
    for mode, parallel in (("one after another", 1), ("side by side", count)):
        t = time.time()
        jobs = [(f"{mode.replace(' ', '-')}-{i}", {**flags, "seed": i}, os.path.join(work, "side", mode, str(i)),
                 os.path.join(out, f"side-{mode.replace(' ', '-')}-{i}.log"), files, work) for i in range(count)]
        for _, _, run_dir, *_ in jobs:
            shutil.rmtree(run_dir, ignore_errors=True)
            os.makedirs(run_dir)
        runs = run_all(jobs, parallel, deadline, log, eval_s=0)
        timings[mode] = {"seconds": round(time.time() - t, 1), "runs": runs}
    a, b = timings["one after another"]["seconds"], timings["side by side"]["seconds"]
    timings["speedup"] = round(a / b, 2) if b else None
    log(f"{count} runs: one after another {a} s, side by side {b} s ({timings['speedup']}x)")
    return timings


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m recon.session", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="write the pack folder from a plan")
    a.add_argument("plan")
    a.add_argument("--output", default="session_pack")
    a.add_argument("--limit-mib", type=float, default=64,
                   help="at most this much travels: the pack and the repository's files")
    a.add_argument("--weights", choices=WEIGHTS, default=None, help="the encoder's weights (default: the plan's, else fp16)")
    b = sub.add_parser("plan", help="list a pack's (or plan file's) parts and their limits")
    b.add_argument("pack")
    c = sub.add_parser("run", help="run one part of a pack's plan")
    c.add_argument("pack")
    c.add_argument("--part", type=int, required=True)
    c.add_argument("--results", required=True, help="the folder every result goes to")
    c.add_argument("--work", default=None, help="scratch folder for runs (default PACK/work)")
    c.add_argument("--keep-weights", action="store_true", help="copy each run's last checkpoint into the results")
    c.add_argument("--archive", default=None, help="also write the part's results as one .tar.gz here (e.g. $OUT/part1.tgz)")
    d = sub.add_parser("summary", help="every part's results under a folder in one summary.md (and printed)")
    d.add_argument("results")
    args = p.parse_args(argv)
    try:
        if args.command == "pack":
            pack(args.plan, args.output, args.limit_mib, args.weights)
        elif args.command == "plan":
            path = os.path.join(args.pack, "plan.yaml") if os.path.isdir(args.pack) else args.pack
            plan = load_plan(path)
            for i, part in enumerate(plan["parts"], start=1):
                what = "; ".join(w for w in (
                    part.get("runs") and f"{len(part['runs'])} runs, {part.get('parallel', 1)} at once",
                    part.get("side_by_side") and f"side by side: {part['side_by_side'].get('count', 3)} runs",
                    part.get("commands") and f"{len(part['commands'])} commands") if w)
                print(f"part {i}: {part['name']:24} {part['limit_s']:>4} s  {what}")
            print(f"in all {sum(pt['limit_s'] for pt in plan['parts'])} s of budget_s {plan.get('budget_s', 1500)}")
        elif args.command == "summary":
            print(summarize(args.results, log=lambda *a: None))
        else:
            run_part(args.pack, args.part, args.results, args.work, args.keep_weights, args.archive)
    except ReconError as e:
        print_error(e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
