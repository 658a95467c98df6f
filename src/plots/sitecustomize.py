# llm-sandbox plot capture (imported at start-up through PYTHONPATH).
#
# Costs next to nothing until the program imports matplotlib.pyplot: a tiny meta-path
# finder waits for that import (the real code is a string, compiled only then), then
# patches the module so that `plt.show()` saves every open figure as PNG under
# $LLM_SANDBOX_PLOTS_DIR (default /sandbox/.plots) and closes it; figures still open when
# the program exits are saved too. The non-interactive Agg backend comes from
# MPLBACKEND=Agg in the environment. Nothing here may break a program: errors are
# swallowed.
import sys as _sys

_LLM_SANDBOX_PLOTS = r'''
import os

out_dir = os.environ.get("LLM_SANDBOX_PLOTS_DIR") or "/sandbox/.plots"
state = {"n": 0}


def save_open_figures(plt):
    try:
        nums = plt.get_fignums()
    except Exception:
        return
    for num in nums:
        try:
            fig = plt.figure(num)
            os.makedirs(out_dir, exist_ok=True)
            while True:
                state["n"] += 1
                path = os.path.join(out_dir, "plot-%03d.png" % state["n"])
                if not os.path.lexists(path):
                    break
            fig.savefig(path, format="png")
        except Exception as e:  # a figure that cannot render must not end the program
            try:
                _sys.stderr.write("llm-sandbox: could not save figure %s: %s\n" % (num, e))
            except Exception:
                pass


def patch(plt):
    def show(*args, **kwargs):
        save_open_figures(plt)
        try:
            plt.close("all")
        except Exception:
            pass

    show.__doc__ = "llm-sandbox: saves every open figure as PNG (see LLM_SANDBOX_PLOTS_DIR)."
    plt.show = show
    import atexit

    # Registered after matplotlib's own exit handler, so it runs before it.
    atexit.register(save_open_figures, plt)


def find_spec(name, path, target):
    """The spec the other finders give, its loader patching the module once loaded."""
    spec = None
    for finder in _sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is not None:
            spec = find(name, path, target)
            if spec is not None:
                break
    if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
        return spec
    original = spec.loader.exec_module

    def exec_module(module):
        original(module)
        try:
            patch(module)
        except Exception:
            pass

    spec.loader.exec_module = exec_module
    return spec
'''


class _LlmSandboxPlotFinder:
    def find_spec(self, name, path=None, target=None):
        if name != "matplotlib.pyplot":
            return None
        try:
            _sys.meta_path.remove(self)
            scope = {"_sys": _sys}
            exec(compile(_LLM_SANDBOX_PLOTS, "<llm-sandbox plots>", "exec"), scope)
            return scope["find_spec"](name, path, target)
        except Exception:
            return None


_sys.meta_path.insert(0, _LlmSandboxPlotFinder())

# The sitecustomize this one hides (the distribution's, further down the path) still runs.
try:
    import os as _os

    _here = _os.path.dirname(_os.path.abspath(__file__))
    for _p in _sys.path:
        _f = _os.path.join(_p, "sitecustomize.py")
        if _p and _os.path.abspath(_p) != _here and _os.path.isfile(_f):
            with open(_f) as _h:
                _code = compile(_h.read(), _f, "exec")
            exec(_code, {"__name__": "sitecustomize", "__file__": _f})
            break
except Exception:
    pass
