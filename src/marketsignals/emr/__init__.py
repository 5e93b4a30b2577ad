"""Packaging and deployment on Amazon EMR (EC2 steps, Serverless, EKS).

Every request sent to AWS is rendered from one source of truth: the app settings (``conf/emr.yaml``,
shipped with the job) plus the deployment profile ``conf/emr/deploy.yaml`` (regions, buckets,
network, roles, capacity), and the artifact built by ``make package`` (``dist/manifest.json``).

- :mod:`.artifact`   what ``dist/`` holds and where it lives in S3
- :mod:`.deployment` the deployment profile: loading, per-region values, placeholder refusal
- :mod:`.submission` one job's spark-submit arguments, rendered for each platform
- :mod:`.api_requests` the API requests (RunJobFlow, StartJobRun, ...) as plain dicts
- :mod:`.aws_cli`    the same requests as ``aws`` CLI commands for people who deploy by hand
- :mod:`.deploy`     the boto3 calls behind ``marketsignals emr``
- :mod:`.package`    builds ``dist/`` (``make package``)
"""
