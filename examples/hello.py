import json, platform, statistics

data = [3, 1, 4, 1, 5, 9, 2, 6]
print(f"Hello from {platform.python_implementation()} {platform.python_version()} on {platform.machine()}")
print(json.dumps({"mean": statistics.mean(data), "median": statistics.median(data)}))
