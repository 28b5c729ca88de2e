"""One module per router; service/api/app.py includes them. A route module imports the
shared steps (service/api/steps.py) and dependencies (service/api/deps.py), never another route."""
