# Rich results, shared by both tiers' runners (internal/nano/runner.py, internal/heavy/agent.py): REPL
# semantics for a final expression, display(), the IPython _repr_*_ protocols, matplotlib figures (PNG,
# SVG on request, an extracted chart), pandas DataFrames (HTML and a table) and plotly figures.
#
# Outputs are Jupyter-style dicts {"type": "execute_result"|"display_data", "data": {mime: value},
# "metadata": {...}, "is_main_result": bool}, handed one by one to the tier's emitter as they happen, so
# the tier can put them in order with stdout. The host re-checks and caps everything (internal/outputs
# collector.go): limits here only keep the guest from building what would be cut anyway.
# Standard library only (the nano tier has nothing else); third-party modules are used only when the
# program itself imported them (sys.modules), never imported here.
import ast
import base64
import builtins
import collections
import io
import json
import keyword
import math
import opcode
import re
import struct
import sys

# Set per run by begin().
_emit = None  # function(dict): sends one output
_svg = False  # add image/svg+xml to figures
_max_rows = 50  # rows of a DataFrame's table and HTML
_max_points = 1000  # points of one chart series

# MIME types the _repr_<name>_ methods give, in IPython's order; binary ones come as bytes or base64.
_REPRS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
    ("application/pdf", "_repr_pdf_"),
)
_BINARY = frozenset(("image/png", "image/jpeg", "application/pdf"))
CHART_MIME = "application/vnd.agentbox.chart+json"
TABLE_MIME = "application/vnd.dataresource+json"


def begin(emit, svg=False, max_rows=50):
    global _emit, _svg, _max_rows
    _emit, _svg, _max_rows = emit, bool(svg), max(1, int(max_rows))


def encode(output):
    """The output as JSON text. Values JSON cannot carry (NaN, objects a _repr_json_ returned) are left
    out with a note on stderr rather than failing the run."""
    try:
        return json.dumps(output, allow_nan=False)
    except (TypeError, ValueError):
        pass
    for part in ("data", "metadata"):
        for key, value in list(output[part].items()):
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as e:
                del output[part][key]
                sys.stderr.write(f"agentbox: {key} of an output left out: {e}\n")
    if not output["data"]:
        output["data"] = {"text/plain": "[agentbox: output left out: its data is not JSON]"}
    return json.dumps(output, allow_nan=False, default=str)


def _send(kind, data, metadata, main=False):
    if _emit is None or not data:
        return
    _emit({"type": kind, "data": data, "metadata": metadata or {}, "is_main_result": main})


def display(*objs, raw=False, metadata=None):
    """Shows each object as a display_data output, like IPython's display(). With raw=True each object
    is a MIME bundle itself ({"text/markdown": "# hi"})."""
    for obj in objs:
        if raw:
            if not isinstance(obj, dict):
                raise TypeError("display(raw=True) takes MIME bundles: dicts from MIME type to data")
            data, md = dict(obj), {}
        else:
            data, md = bundle(obj)
        if metadata:
            md = {**md, **metadata}
        _send("display_data", data, md)


def _text(obj):
    try:
        return repr(obj)
    except Exception as e:  # noqa: BLE001 - a broken __repr__ must not lose the run
        return f"<{type(obj).__name__} object (repr failed: {type(e).__name__})>"


def _module_of(obj):
    return type(obj).__module__ or ""


def _isinstance_of(obj, module, name):
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)


def bundle(obj):
    """The MIME bundle and metadata of obj: what IPython's formatters would give, plus the extras. A
    formatter that fails is reported on stderr and the text representation stands (as in IPython)."""
    try:
        return _bundle(obj)
    except Exception as e:  # noqa: BLE001
        try:
            sys.stderr.write(f"agentbox: formatting a {type(obj).__name__} failed: {type(e).__name__}: {e}\n")
        except Exception:  # noqa: BLE001
            pass
        return {"text/plain": _text(obj)}, {}


def _bundle(obj):
    if _isinstance_of(obj, "matplotlib.figure", "Figure"):
        return _figure(obj, close=True)
    if _isinstance_of(obj, "pandas", "DataFrame") or _isinstance_of(obj, "pandas", "Series"):
        return _frame(obj)
    if _module_of(obj).startswith("plotly.") and callable(getattr(obj, "to_json", None)) and hasattr(obj, "to_plotly_json"):
        return _plotly(obj)
    data, md = {}, {}
    mb = getattr(obj, "_repr_mimebundle_", None)
    if callable(mb) and not isinstance(obj, type):
        got = _call(mb, include=None, exclude=None)
        if isinstance(got, tuple) and len(got) == 2:
            got, extra = got
            if isinstance(extra, dict):
                md.update(extra)
        if isinstance(got, dict):
            data.update(got)
    for mime, name in _REPRS:
        if mime in data:
            continue
        fn = getattr(obj, name, None)
        if not callable(fn) or isinstance(obj, type):
            continue
        got = _call(fn)
        if isinstance(got, tuple) and len(got) == 2:
            got, extra = got
            if isinstance(extra, dict):
                md[mime] = extra
        if got is None:
            continue
        if mime in _BINARY and isinstance(got, (bytes, bytearray)):
            got = base64.b64encode(got).decode()
        data[mime] = got
    for mime, value in list(data.items()):
        if mime in _BINARY and isinstance(value, (bytes, bytearray)):
            data[mime] = base64.b64encode(value).decode()
    data.setdefault("text/plain", _text(obj))
    return data, md


def _call(fn, **kwargs):
    try:
        return fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - like IPython: a failing formatter is reported, not fatal
        try:
            sys.stderr.write(f"agentbox: {getattr(fn, '__qualname__', 'a formatter')} failed: {type(e).__name__}: {e}\n")
        except Exception:  # noqa: BLE001
            pass
        return None


# --- REPL semantics -------------------------------------------------------------------------------

def run(code, filename, g, repl=True):
    """Executes code in the namespace g. With repl, a final expression statement's value becomes the
    main result (execute_result), unless it is None or the statement ends with ';'. Exceptions,
    SyntaxError included, propagate to the caller.

    The program is compiled as a script would be; the common cases are then read from the bytecode
    (see _final_expression), which costs a fraction of parsing it into a Python AST. Only the cases
    the bytecode cannot tell go through the AST (_run_ast)."""
    if repl and ";" not in code and ":" not in code and "\n" not in code.rstrip() and code[:1].strip() and not _blank(code):
        # One simple statement on one line, the common notebook cell (`df.head()`, `print(x)`): compiled
        # in the interactive mode, which hands an expression statement's value to sys.displayhook as
        # the REPL does. Cheaper than the bytecode reading below, which must copy the code object.
        single = compile(code, filename, "single", dont_inherit=True)
        hook, sys.displayhook = sys.displayhook, _main_result
        try:
            exec(single, g)
        finally:
            sys.displayhook = hook
        return
    compiled = compile(code, filename, "exec", dont_inherit=True)
    if not repl:
        exec(compiled, g)
        return
    final = _final_expression(code, compiled)
    if final is None:
        _run_ast(code, filename, g)
    elif final is False:
        exec(compiled, g)
    else:
        _main_result(eval(final, g))


_POP_TOP = opcode.opmap["POP_TOP"]
_LOAD_CONST = opcode.opmap["LOAD_CONST"]
_RETURN_VALUE = opcode.opmap["RETURN_VALUE"]
_STORE_NAME = opcode.opmap["STORE_NAME"]
# Words a statement (not an expression) may start with; a final "expression" starting with one is
# confirmed by compiling it alone (`with` and `from ... import` also end in POP_TOP; `not x` and
# `match` as a name are expressions).
_KEYWORDS = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist)
# Compiled here, so that it is in the nano snapshot: compiling it in every fresh sandbox cost more
# than the rest of the machinery.
_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")


def _blank(text):
    text = text.strip()
    return not text or text.startswith("#")


def _final_expression(code, co):
    """What the module's bytecode says of its final statement: a copy of co that returns the value of
    a final expression statement instead of dropping it; False when there is no main result; None
    when only the AST can tell.

    A module ends with LOAD_CONST None, RETURN_VALUE located at its last statement. An expression
    statement leaves POP_TOP before it, located at the expression; at column 0 it is a top-level
    statement. Constant expression statements compile to nothing, so a return located elsewhere than
    the code before it, or anything but comments after it, is left to the AST."""
    b = co.co_code
    if len(b) < 6 or b[-6] == opcode.EXTENDED_ARG or b[-4] != _LOAD_CONST or b[-2] != _RETURN_VALUE or co.co_consts[b[-3]] is not None:
        return None
    if b[-6] == _POP_TOP and ";" not in code and ":" not in code and "\n" not in code.rstrip():
        # One simple statement on one line (no ';', no compound statement, no lambda): the common
        # notebook cell `df.head()`, read without the positions, which cost most of this function.
        return _returning(co, b, code, code.encode())
    last, _, ret = collections.deque(co.co_positions(), maxlen=3)
    if last != ret or None in ret:
        return None
    line, end_line, col, end_col = ret
    lines = code.splitlines()
    if not 1 <= line <= end_line <= len(lines) or not all(_blank(text) for text in lines[end_line:]):
        return None
    rest = lines[end_line - 1].encode()[end_col:]
    if b[-6] != _POP_TOP:
        # The last statement's code is not an expression's, and no constant expression (which
        # compiles to nothing) follows it on its line after a ';'. A lone docstring stores __doc__.
        if b";" in rest or b[-6] == _STORE_NAME and co.co_names[b[-5]] == "__doc__":
            return None
        return False
    rest = rest.decode(errors="replace").lstrip()
    suppressed = rest.startswith(";")
    if not _blank(rest[1:] if suppressed else rest):
        return None
    start = lines[line - 1].encode()
    if col > 0:
        # Indented: the body of a block (if, for, with...), never a main result; else after a ';'.
        return False if not start[:col].strip() else None
    if suppressed:
        return False
    segment = b"\n".join([start[col:]] + [text.encode() for text in lines[line:end_line]])
    return _returning(co, b, segment[: len(segment) - len(lines[end_line - 1].encode()) + end_col], start)


def _returning(co, b, segment, start):
    """co made to return the value its final POP_TOP drops. The statement there, segment (its first
    line is start), is an expression unless it starts with a keyword and does not compile alone as
    one (`with`, `from m import x`)."""
    word = _WORD.match(start)
    if word is not None and word.group().decode() in _KEYWORDS:
        try:
            compile(segment, "<check>", "eval", dont_inherit=True)
        except SyntaxError:
            return False
    return co.replace(co_code=b[: len(b) - 6] + bytes((_RETURN_VALUE, 0)) + b[len(b) - 4:])


def _run_ast(code, filename, g):
    """REPL semantics through the AST: the final expression wrapped in a call to _main_result
    (through builtins, where the program's names cannot shadow it by accident)."""
    tree = compile(code, filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    body = tree.body
    if body and isinstance(body[-1], ast.Expr) and not _suppressed(code, body[-1]):
        value = body[-1].value
        func = ast.Name("_agentbox_main_result", ast.Load())
        call = ast.Call(func, [value], [])
        ast.copy_location(func, value)
        body[-1].value = ast.copy_location(call, value)
    exec(compile(tree, filename, "exec", dont_inherit=True), g)


def _main_result(value):
    if value is None:
        return
    builtins._ = value
    data, md = bundle(value)
    _send("execute_result", data, md, main=True)


builtins._agentbox_main_result = _main_result


def _suppressed(code, stmt):
    """Whether the statement is followed by a ';' (IPython's rule for not showing a value). Only
    comments and blank lines may follow it, so the ';' is right after its end on its last line."""
    lines = code.splitlines()
    if stmt.end_lineno is None or stmt.end_lineno > len(lines):
        return False
    rest = lines[stmt.end_lineno - 1].encode()[stmt.end_col_offset:]  # offsets are in UTF-8 bytes
    return rest.lstrip().startswith(b";")


# --- matplotlib -----------------------------------------------------------------------------------

def show_figures():
    """Sends every open matplotlib figure as display_data and closes it (plt.show, and the end of a
    run: figures left open are shown like Jupyter's inline backend does)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for num in plt.get_fignums():
        fig = plt.figure(num)
        try:
            data, md = _figure(fig, close=False)
        except Exception as e:  # noqa: BLE001 - a broken figure must not lose the run's result
            sys.stderr.write(f"agentbox: could not render figure {num}: {type(e).__name__}: {e}\n")
            data, md = {}, {}
        _send("display_data", data, md)
    plt.close("all")


def _figure(fig, close):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    png = buf.getvalue()
    data = {"text/plain": _text(fig), "image/png": base64.b64encode(png).decode()}
    md = {}
    if png[12:16] == b"IHDR":
        w, h = struct.unpack(">II", png[16:24])
        md["image/png"] = {"width": w, "height": h}
    if _svg:
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
        data["image/svg+xml"] = buf.getvalue()
    try:
        chart = _chart(fig)
    except Exception:  # noqa: BLE001 - the chart is an extra: the image stands without it
        chart = None
    if chart is not None:
        data[CHART_MIME] = chart
    num = getattr(fig, "number", None)
    if num is not None:
        md["figure"] = num
    if close:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close(fig)
    return data, md


def _plain(v):
    """A JSON-able scalar from a number, numpy scalar, date or anything else (as text)."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    item = getattr(v, "item", None)
    if callable(item):
        try:
            return _plain(item())
        except Exception:  # noqa: BLE001
            pass
    if isinstance(v, str):
        return v
    return str(v)


def _values(seq):
    out = []
    for v in seq:
        if len(out) >= _max_points:
            break
        out.append(_plain(v))
    return out


def _chart(fig):
    """A description of a simple chart for agents that cannot see the image: its type, title, axes and
    series data. One Axes gives one chart; several (subplots) a "composite" of them."""
    charts = [c for c in (_axes_chart(ax) for ax in fig.get_axes()) if c is not None]
    if not charts:
        return None
    if len(charts) == 1:
        return charts[0]
    sup = getattr(fig, "_suptitle", None)
    return {"type": "composite", "title": sup.get_text() if sup is not None else "", "charts": charts}


def _axes_chart(ax):
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import Wedge

    series = []
    wedges = [p for p in ax.patches if isinstance(p, Wedge)]
    if wedges:
        total = sum(abs(w.theta2 - w.theta1) for w in wedges) or 1.0
        series.append({"kind": "pie", "labels": [w.get_label() for w in wedges],
                       "fractions": [round(abs(w.theta2 - w.theta1) / total, 6) for w in wedges]})
    ticks = {}
    try:
        for pos, label in zip(ax.get_xticks(), ax.get_xticklabels()):
            if label.get_text():
                ticks[round(float(pos), 6)] = label.get_text()
    except Exception:  # noqa: BLE001
        ticks = {}
    for c in ax.containers:
        if not isinstance(c, BarContainer):
            continue
        xs, ys = [], []
        for r in c.patches[:_max_points]:
            center = round(r.get_x() + r.get_width() / 2, 6)
            xs.append(ticks.get(center, _plain(center)))
            ys.append(_plain(r.get_height()))
        label = c.get_label()
        series.append({"kind": "bar", "label": "" if not label or label.startswith("_") else label, "x": xs, "y": ys,
                       "points": len(c.patches)})
    bars = bool(series) and series[-1]["kind"] == "bar"
    for line in ax.get_lines():
        label = line.get_label()
        x, y = _values(line.get_xdata()), _values(line.get_ydata())
        if all(v is None for v in y):
            continue
        if bars and len(x) == 2 and x[0] == x[1]:
            continue  # an error bar drawn over a bar (seaborn's barplot)
        series.append({"kind": "line", "label": "" if label.startswith("_") else label, "x": x, "y": y,
                       "points": len(line.get_ydata())})
    for coll in ax.collections:
        if not isinstance(coll, PathCollection):
            continue
        offsets = coll.get_offsets()
        label = coll.get_label()
        series.append({"kind": "scatter", "label": "" if label.startswith("_") else label,
                       "x": _values(p[0] for p in offsets), "y": _values(p[1] for p in offsets), "points": len(offsets)})
    if not series:
        return None
    kinds = {s["kind"] for s in series}
    chart = {"type": kinds.pop() if len(kinds) == 1 else "mixed", "title": ax.get_title(), "series": series}
    if "pie" not in kinds or chart["type"] != "pie":
        chart["x_axis"] = {"label": ax.get_xlabel(), "scale": ax.get_xscale()}
        chart["y_axis"] = {"label": ax.get_ylabel(), "scale": ax.get_yscale()}
    return chart


# --- hooks into libraries (heavy tier) ------------------------------------------------------------

def _patch_pyplot(plt):
    if getattr(plt.show, "_agentbox", False):
        return

    def show(*args, **kwargs):
        show_figures()

    show._agentbox = True
    plt.show = show


def _patch_plotly_io(pio):
    # Figure.show() calls plotly.io.show, which would look for a browser or IPython.
    def show(fig, *args, **kwargs):
        display(fig)

    pio.show = show


_HOOKS = {"matplotlib.pyplot": _patch_pyplot, "plotly.io": _patch_plotly_io}


class _PostImport:
    """A meta-path finder that runs a hook on a module once it has been executed, whenever the program
    imports it: plt.show() and fig.show() then display their figures."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        hook = _HOOKS.get(name)
        if hook is None:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is _PostImport or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        real = getattr(loader, "exec_module", None)
        if real is None:
            return spec

        def exec_module(module):
            real(module)
            hook(module)

        loader.exec_module = exec_module  # this loader instance serves this module only
        return spec

    @staticmethod
    def invalidate_caches():
        pass


def install_hooks():
    """Patches the libraries' show() now if they are loaded, and on import otherwise."""
    for name, hook in _HOOKS.items():
        if name in sys.modules:
            hook(sys.modules[name])
    if _PostImport not in sys.meta_path:
        sys.meta_path.insert(0, _PostImport)


# --- pandas and plotly ----------------------------------------------------------------------------

def _frame(obj):
    """A DataFrame (or Series): pandas' own text and HTML, and a table (Table Schema plus the first
    rows, application/vnd.dataresource+json), both limited to _max_rows rows."""
    pd = sys.modules["pandas"]
    df = obj.to_frame() if isinstance(obj, pd.Series) else obj
    rows, cols = df.shape
    data = {"text/plain": _text(obj)}
    md = {"rows": int(rows), "columns": int(cols)}
    try:
        data["text/html"] = df.to_html(max_rows=_max_rows, max_cols=50, notebook=False)
    except Exception:  # noqa: BLE001
        pass
    try:
        head = df.head(_max_rows)
        if head.columns.duplicated().any():
            raise ValueError("duplicate column names")
        table = json.loads(head.to_json(orient="table", date_format="iso", default_handler=str))
        table.get("schema", {}).pop("pandas_version", None)
        if rows > _max_rows:
            md["truncated_rows"] = int(rows - _max_rows)
        data[TABLE_MIME] = table
    except Exception:  # noqa: BLE001 - e.g. duplicate or MultiIndex columns: the HTML stands
        pass
    return data, md


def _plotly(fig):
    data = {"text/plain": _text(fig), "application/vnd.plotly.v1+json": json.loads(fig.to_json())}
    return data, {}
