"""RSS over time of one training run of methods.py's budget, with the phases marked (a diagnostic).

    .venv/bin/python benchmarks/memory_timeline.py sst2 lora [KEY=VALUE ...]

Prints RSS after the model is built, the peak and when it happened, the RSS at the start and end of the
evaluation, model save and monitoring-profile phases, the peak before the model / during the training steps /
after them, and RSS every ~5 s. Samples every 0.1 s from a thread; writes nothing but its run folder.
"""
import sys, threading, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import methods
import tunelab.training.loop as loop
import tunelab.training.checkpoint as ck
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024
events = []; samples = []
t0 = time.perf_counter()
def mark(name): events.append((time.perf_counter() - t0, name, rss()))
def sampler():
    while True:
        samples.append((time.perf_counter() - t0, rss())); time.sleep(0.1)
threading.Thread(target=sampler, daemon=True).start()
def wrap(mod, fname):
    real = getattr(mod, fname)
    def w(*a, **k):
        mark(fname + " start"); r = real(*a, **k); mark(fname + " end"); return r
    setattr(mod, fname, w)
for f in ("save_checkpoint", "save_model_folder", "iter_probabilities", "_evaluate_and_keep_best"):
    if hasattr(loop, f): wrap(loop, f)
import tunelab.monitor.profile as prof; wrap(prof, "build_profile")
dataset, method = sys.argv[1], sys.argv[2]
extra = sys.argv[3:]
real_apply = loop.apply_method
def ap(model, mc):
    m = real_apply(model, mc); mark("model built"); return m
loop.apply_method = ap
from tunelab.config import load_config
example, overrides, split = methods.DATASETS[dataset]
overrides = [f"data.train={methods.sst2_subset_csv()}", *overrides]
config = load_config(methods.REPO / "examples" / example, [f"runs_dir={methods.WORK / 'runs'}", f"name=memory-timeline", f"method.name={method}", *overrides, *extra])
loop.train(config, overwrite=True, quiet=True)
mark("done")
built = next(e for e in events if e[1] == "model built")
peak = max(samples, key=lambda s: s[1])
print(f"{method} {extra}: rss after model {built[2]:.0f}, peak {peak[1]:.0f} at t={peak[0]:.1f}s -> train memory {peak[1]-built[2]:.0f} MB")
for e in events: print(f"  {e[0]:7.1f}s {e[1]:35s} {e[2]:.0f}")
# peak per phase: before model, training steps (between model built and first eval), after
import numpy as np
s = np.array(samples)
def pk(a, b): 
    m = (s[:,0] >= a) & (s[:,0] < b); return s[m,1].max() if m.any() else 0
first_eval = next((e[0] for e in events if e[1].startswith("iter_probabilities start")), 1e9)
print(f"  peak before model {pk(0, built[0]):.0f}; steps {pk(built[0], first_eval):.0f}; after steps {pk(first_eval, 1e9):.0f}")
print("  timeline:", " ".join(f"{t:.0f}s:{r:.0f}" for t, r in samples[::50]))
