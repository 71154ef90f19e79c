"""A sweep's parts: the Optuna study and its phases (`study`), the workers that run its trials
(`trials`), the search space read from YAML (`search_space`), the rule that picks the answer
(`recommendation`), the registration of the answer (`registration`) and what the study's parent
run shows (`summary`). The procedure that puts them in order is `stages/sweep.py`.
"""
