package router

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

func TestDecide(t *testing.T) {
	rules := DefaultRules()
	cases := []struct {
		code   string
		req    api.RunRequest
		tier   api.Tier
		reason string // substring
	}{
		{"print(1)", api.RunRequest{}, api.TierNano, "no imports"},
		{"import json", api.RunRequest{}, api.TierNano, "json"},
		{"import re, datetime, collections", api.RunRequest{}, api.TierNano, "standard library"},
		{"from decimal import Decimal", api.RunRequest{}, api.TierNano, "decimal"},
		{"import statistics as st", api.RunRequest{}, api.TierNano, "statistics"},
		{"import sqlite3", api.RunRequest{}, api.TierNano, "sqlite3"},
		{"import zlib, bz2, lzma, hashlib", api.RunRequest{}, api.TierNano, "standard library"},
		{"import os.path", api.RunRequest{}, api.TierNano, "os"},
		{"from urllib.parse import urlparse", api.RunRequest{}, api.TierNano, "urllib"},
		{"import csv\nimport io", api.RunRequest{}, api.TierNano, "csv, io"},
		{"import itertools, functools, operator", api.RunRequest{}, api.TierNano, "itertools"},
		{"import math, random, uuid", api.RunRequest{}, api.TierNano, "math"},
		{"import typing, dataclasses, enum", api.RunRequest{}, api.TierNano, "dataclasses"},
		{"import pathlib, shutil, tempfile", api.RunRequest{}, api.TierNano, "pathlib"},
		{"import textwrap, string, difflib", api.RunRequest{}, api.TierNano, "difflib"},
		{"s = 'import numpy'\nprint(s)", api.RunRequest{}, api.TierNano, "no imports"},
		{"# import pandas\nimport json", api.RunRequest{}, api.TierNano, "json"},
		{"'''\nimport scipy\n'''\nx = 1", api.RunRequest{}, api.TierNano, "no imports"},
		{"from . import helper", api.RunRequest{}, api.TierNano, "no imports"},
		{"import numpy as np", api.RunRequest{}, api.TierHeavy, "line 1 imports numpy, which only the heavy tier has"},
		{"import pandas as pd", api.RunRequest{}, api.TierHeavy, "pandas"},
		{"import matplotlib.pyplot as plt", api.RunRequest{}, api.TierHeavy, "matplotlib.pyplot"},
		{"from scipy import stats", api.RunRequest{}, api.TierHeavy, "scipy"},
		{"from sklearn.linear_model import LinearRegression", api.RunRequest{}, api.TierHeavy, "sklearn"},
		{"from PIL import Image", api.RunRequest{}, api.TierHeavy, "PIL"},
		{"import json\n\ndef f():\n    import numpy\n", api.RunRequest{}, api.TierHeavy, "line 4 imports numpy"},
		{"try:\n    import pandas\nexcept ImportError:\n    pandas = None", api.RunRequest{}, api.TierHeavy, "line 2"},
		{"m = __import__('numpy')", api.RunRequest{}, api.TierHeavy, "numpy"},
		{"import importlib\nimportlib.import_module('pandas')", api.RunRequest{}, api.TierHeavy, "pandas"},
		{"import requests", api.RunRequest{}, api.TierHeavy, "third-party"},
		{"import torch", api.RunRequest{}, api.TierHeavy, "third-party"},
		{"from mylib.sub import thing", api.RunRequest{}, api.TierHeavy, "third-party"},
		{"import ssl", api.RunRequest{}, api.TierHeavy, "cannot use"},
		{"import ctypes", api.RunRequest{}, api.TierHeavy, "cannot use"},
		{"import subprocess\nsubprocess.run(['ls'])", api.RunRequest{}, api.TierHeavy, "cannot use"},
		{"import threading", api.RunRequest{}, api.TierHeavy, "cannot use"},
		{"from multiprocessing import Pool", api.RunRequest{}, api.TierHeavy, "cannot use"},
		{"import urllib.request", api.RunRequest{}, api.TierHeavy, "urllib.request"},
		{"from concurrent.futures import ThreadPoolExecutor", api.RunRequest{}, api.TierHeavy, "concurrent.futures"},
		{"import socket", api.RunRequest{}, api.TierHeavy, "cannot use"},
		// With a network asked for, nano's HTTP bridge serves urllib.request and http.client; sockets stay heavy.
		{"import urllib.request", api.RunRequest{Network: &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}}}, api.TierNano, "host bridge"},
		{"import http.client", api.RunRequest{Network: &api.NetworkPolicy{}}, api.TierNano, "host bridge"},
		{"from urllib.request import urlopen", api.RunRequest{Intent: &api.Intent{URLs: []string{"https://example.com/"}}}, api.TierNano, "host bridge"},
		{"import socket", api.RunRequest{Network: &api.NetworkPolicy{}}, api.TierHeavy, "cannot use"},
		{"import urllib.request\nimport numpy", api.RunRequest{Network: &api.NetworkPolicy{}}, api.TierHeavy, "numpy"},
		{"import agentbox.http", api.RunRequest{}, api.TierNano, "host bridge"},
		{"print(1)", api.RunRequest{Packages: []string{"requests"}}, api.TierHeavy, "packages"},
		{"print(1)", api.RunRequest{Limits: api.Limits{MemoryLimitMB: 4096}}, api.TierHeavy, "memory_limit_mb 4096"},
		{"print(1)", api.RunRequest{Limits: api.Limits{TimeoutMS: 3_600_000}}, api.TierHeavy, "timeout_ms"},
		{"import json", api.RunRequest{Limits: api.Limits{MemoryLimitMB: 512, TimeoutMS: 60000}}, api.TierNano, "json"},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.code, "\n", "⏎"), func(t *testing.T) {
			req := tc.req
			req.Code = tc.code
			d := rules.Decide(req)
			if d.Tier != tc.tier || !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("got %s (%s), want %s with %q", d.Tier, d.Reason, tc.tier, tc.reason)
			}
		})
	}
}

func TestRulesFileErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, text string
		line       int
		msg        string
	}{
		{"syntax", "heavy_modules = [\"numpy\",\nnano_unusable = 3\n", 2, ""},
		{"unknown key", "heavy_modules = [\"numpy\"]\nheavy_modlues = [\"x\"]\n", 2, "unknown key"},
		{"bad module name", "heavy_modules = [\"numpy\",\n  \"not a module\"]\n", 2, "not a module name"},
		{"negative limit", "[nano_max]\ntimeout_ms = -1\n", 1, "negative"},
		{"wrong type", "heavy_modules = \"numpy\"\n", 1, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".toml")
			os.WriteFile(p, []byte(tc.text), 0o644)
			_, err := LoadRules(p)
			var re *RulesError
			if !errors.As(err, &re) {
				t.Fatalf("err %v, want a RulesError", err)
			}
			if re.Line != tc.line || !strings.Contains(re.Msg, tc.msg) || !strings.Contains(err.Error(), p) {
				t.Fatalf("got %v (line %d), want line %d with %q", err, re.Line, tc.line, tc.msg)
			}
		})
	}
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte("heavy_modules = [\"numpy\", \"torch\"]\n"), 0o644)
	r, err := LoadRules(good)
	if err != nil {
		t.Fatal(err)
	}
	if d := r.Decide(api.RunRequest{Code: "import torch"}); d.Tier != api.TierHeavy || !strings.Contains(d.Reason, "only the heavy tier has") {
		t.Fatalf("%+v", d)
	}
	if len(r.NanoUnusable) == 0 {
		t.Fatal("a rules file that does not set nano_unusable must keep the defaults")
	}
}

// TestFallbackIsStructured (issue 9 #20): the fallback decides on what the nano runner reported
// (Result.Missing), not on the error's wording: a message that merely mentions a missing module or the
// nano tier changes nothing, and a reported lack falls back whatever the message says.
func TestFallbackIsStructured(t *testing.T) {
	rules := DefaultRules()
	nano := func(errType, msg string, m *api.Missing) *api.Result {
		return &api.Result{Tier: api.TierNano, ExitCode: 1, Error: &api.Error{Type: errType, Message: msg}, Missing: m}
	}
	cases := []struct {
		name   string
		res    *api.Result
		want   bool
		reason string // substring
	}{
		{"module heavy has", nano("ModuleNotFoundError", "No module named 'numpy'", &api.Missing{Module: "numpy"}), true, "No module named 'numpy'; the heavy tier has it"},
		{"module nobody has", nano("ModuleNotFoundError", "No module named 'mymodule'", &api.Missing{Module: "mymodule"}), false, ""},
		{"feature, any wording", nano("RuntimeError", "can't start new thread", &api.Missing{Feature: "threads"}), true, "can't start new thread"},
		{"unavailable module", nano("ModuleNotFoundError", "No module named 'ssl': ...", &api.Missing{Module: "ssl", Feature: "tls"}), true, "ssl"},
		{"feature without an error message", &api.Result{Tier: api.TierNano, ExitCode: 1, Missing: &api.Missing{Feature: "processes"}}, true, "needs processes"},
		{"text about numpy, nothing reported", nano("ModuleNotFoundError", "No module named 'numpy'", nil), false, ""},
		{"text about the nano tier, nothing reported", nano("RuntimeError", "threads are not available in the nano tier", nil), false, ""},
		{"text about processes, nothing reported", nano("OSError", "wasi does not support processes.", nil), false, ""},
		{"heavy result", &api.Result{Tier: api.TierHeavy, Error: &api.Error{Type: "ModuleNotFoundError"}, Missing: &api.Missing{Module: "numpy"}}, false, ""},
		{"nil", nil, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			why, ok := rules.Fallback(c.res)
			if ok != c.want || !strings.Contains(why, c.reason) {
				t.Fatalf("Fallback = %q, %v; want %v with %q", why, ok, c.want, c.reason)
			}
		})
	}
}
