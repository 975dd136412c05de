-- Runs once, when the postgres volume is first initialised: the MLflow tracking server's database,
-- beside edgeloop's own (POSTGRES_DB=edgeloop), owned by the same role.
CREATE DATABASE mlflow OWNER edgeloop;
