"""Typed boundary models: step parameters, file schemas and the container env contract.

Only the standard library and pydantic are imported here, so the Airflow (DAG) image can load it.
"""
