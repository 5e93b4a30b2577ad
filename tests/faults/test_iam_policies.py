"""The IAM policy documents in conf/emr/iam (issue 7) are least-privilege: each statement names its actions
and resources (no wildcards beyond prefixes), and a small evaluator of IAM's Allow logic proves what the
job can and cannot do -- read its artifact, write checkpoints and append to the audit table, read the
tick topics and write the signal topics, read one secret; not rewrite its own code, delete audit rows,
write ticks, create topics or read other secrets.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest

from faults.harness import ROOT

pytestmark = pytest.mark.faults

IAM = ROOT / "conf" / "emr" / "iam"
VALUES = {
    "<ACCOUNT_ID>": "111122223333", "<REGION>": "us-east-1", "<ARTIFACT_BUCKET>": "acme-artifacts",
    "<DATA_BUCKET>": "acme-data", "<KMS_KEY_ARN>": "arn:aws:kms:us-east-1:111122223333:key/data-key",
    "<SECRET_KMS_KEY_ARN>": "arn:aws:kms:us-east-1:111122223333:key/secret-key", "<MSK_CLUSTER_NAME>": "ticks",
    "<MSK_CLUSTER_UUID>": "0c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f-3", "<EMR_EC2_INSTANCE_ROLE>": "marketsignals-ec2",
    "<EKS_OIDC_PROVIDER>": "oidc.eks.us-east-1.amazonaws.com/id/ABCDEF0123456789",
}
# Actions AWS only grants on "*" (no resource-level permissions), each with the condition that scopes it.
STAR_ONLY = {"cloudwatch:PutMetricData": "cloudwatch:namespace"}
S3 = "arn:aws:s3:::"
KAFKA = "arn:aws:kafka:us-east-1:111122223333:"
CLUSTER = "ticks/0c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f-3"


def load(name: str) -> dict:
    text = (IAM / name).read_text()
    for placeholder, value in VALUES.items():
        text = text.replace(placeholder, value)
    left = re.findall(r"<[A-Z0-9_]+>", text)
    assert not left, f"{name}: placeholders without a test value: {left}"
    return json.loads(text)


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _match(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern)


def _condition_holds(condition: dict, context: dict) -> bool:
    for operator, pairs in condition.items():
        for key, wanted in pairs.items():
            if key not in context:
                return False
            have = context[key]
            if operator in ("StringEquals", "Bool"):
                ok = any(str(have) == str(w) for w in _listed(wanted))
            elif operator in ("StringLike", "ArnLike"):
                ok = any(_match(w, str(have)) for w in _listed(wanted))
            else:
                raise AssertionError(f"the evaluator does not know {operator}")
            if not ok:
                return False
    return True


def allowed(policy: dict, action: str, resource: str, **context) -> bool:
    """IAM's identity-policy Allow (no Deny statements are used): some statement allows the action on
    the resource and its conditions hold."""
    for st in policy["Statement"]:
        if st["Effect"] != "Allow":
            continue
        if not any(_match(a.lower(), action.lower()) for a in _listed(st["Action"])):
            continue
        if not any(_match(r, resource) for r in _listed(st["Resource"])):
            continue
        if _condition_holds(st.get("Condition", {}), context):
            return True
    return False


@pytest.mark.parametrize("name", sorted(p.name for p in IAM.glob("*.json")))
def test_every_document_is_valid_and_has_no_broad_grant(name):
    policy = load(name)
    assert policy["Version"] == "2012-10-17"
    sids = [st.get("Sid") for st in policy["Statement"]]
    assert all(sids) and len(set(sids)) == len(sids), f"{name}: every statement needs a unique Sid"
    for st in policy["Statement"]:
        assert "NotAction" not in st and "NotResource" not in st and "NotPrincipal" not in st
        for action in _listed(st["Action"]):
            assert action != "*" and not action.endswith(":*"), f"{name} {st['Sid']}: {action}"
        if "Principal" in st:  # a trust policy
            assert st["Action"] in ("sts:AssumeRole", "sts:AssumeRoleWithWebIdentity")
            continue
        for resource in _listed(st["Resource"]):
            if resource == "*":
                for action in _listed(st["Action"]):
                    key = STAR_ONLY.get(action)
                    assert key, f"{name} {st['Sid']}: {action} on every resource"
                    assert any(key in pairs for pairs in st.get("Condition", {}).values()), f"{action} unscoped"
            else:
                assert resource.count("*") <= 1 and not resource.endswith(":::*"), f"{name}: {resource}"


def test_the_job_reads_its_code_writes_its_state_and_appends_its_audit_only():
    job = load("marketsignals-job-policy.json")
    artifact = f"{S3}acme-artifacts/marketsignals/artifacts/0.1.0/abc/marketsignals-env.tar.gz"
    can = [
        ("s3:GetObject", artifact, {}),
        ("s3:PutObject", f"{S3}acme-data/marketsignals/checkpoints/stream/offsets/7", {}),
        ("s3:DeleteObject", f"{S3}acme-data/marketsignals/checkpoints/stream/state/0/1/3.changelog", {}),
        ("s3:PutObject", f"{S3}acme-data/marketsignals/tables/signals_audit/_delta_log/00000000000000000007.json", {}),
        ("s3:GetObject", f"{S3}acme-data/marketsignals/history/date=2026-01-02/part-0.parquet", {}),
        ("s3:PutObject", f"{S3}acme-data/marketsignals/logs/j-1/steps/s-1/stderr.gz", {}),
        ("s3:ListBucket", f"{S3}acme-data", {"s3:prefix": "marketsignals/checkpoints/stream/commits/"}),
        # Delta's listing of the audit log from a version on S3A (stream.sinks.fast_log_listing): no trailing /
        ("s3:ListBucket", f"{S3}acme-data", {"s3:prefix": "marketsignals/tables/signals_audit/_delta_log"}),
        ("kms:GenerateDataKey", VALUES["<KMS_KEY_ARN>"], {"kms:ViaService": "s3.us-east-1.amazonaws.com"}),
        ("logs:PutLogEvents", "arn:aws:logs:us-east-1:111122223333:log-group:/aws/emr/marketsignals:log-stream:d", {}),
        ("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "MarketSignals"}),
    ]
    cannot = [
        ("s3:PutObject", artifact, {}),  # the job cannot rewrite its own code
        ("s3:DeleteObject", f"{S3}acme-data/marketsignals/tables/signals_audit/part-0.parquet", {}),  # append-only
        ("s3:PutObject", f"{S3}acme-data/marketsignals/history/x.parquet", {}),  # history is read-only
        ("s3:GetObject", f"{S3}acme-data/other-team/secret.csv", {}),
        ("s3:GetObject", f"{S3}another-bucket/marketsignals/artifacts/x", {}),
        ("s3:ListBucket", f"{S3}acme-data", {"s3:prefix": ""}),
        ("s3:ListBucket", f"{S3}acme-data", {}),
        ("kms:Decrypt", VALUES["<KMS_KEY_ARN>"], {}),  # only through S3
        ("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "AWS/EC2"}),
        ("logs:PutLogEvents", "arn:aws:logs:us-east-1:111122223333:log-group:/other:log-stream:x", {}),
        ("iam:PassRole", "arn:aws:iam::111122223333:role/admin", {}),
        ("s3:DeleteBucket", f"{S3}acme-data", {}),
    ]
    for action, resource, context in can:
        assert allowed(job, action, resource, **context), f"the job needs {action} on {resource}"
    for action, resource, context in cannot:
        assert not allowed(job, action, resource, **context), f"the job must not have {action} on {resource}"


def test_the_job_reads_ticks_and_writes_signals_on_its_cluster_only():
    msk = load("msk-iam-auth.json")
    can = [
        ("kafka-cluster:Connect", f"{KAFKA}cluster/{CLUSTER}"),
        ("kafka-cluster:WriteDataIdempotently", f"{KAFKA}cluster/{CLUSTER}"),
        ("kafka-cluster:ReadData", f"{KAFKA}topic/{CLUSTER}/market-data"),
        ("kafka-cluster:DescribeTopic", f"{KAFKA}topic/{CLUSTER}/trade-data"),
        ("kafka-cluster:WriteData", f"{KAFKA}topic/{CLUSTER}/trading-signals"),
        ("kafka-cluster:WriteData", f"{KAFKA}topic/{CLUSTER}/dead-letter"),
        ("kafka-cluster:AlterGroup", f"{KAFKA}group/{CLUSTER}/spark-kafka-source-7f2a-driver-0"),
    ]
    cannot = [
        ("kafka-cluster:WriteData", f"{KAFKA}topic/{CLUSTER}/market-data"),  # never forge ticks
        ("kafka-cluster:ReadData", f"{KAFKA}topic/{CLUSTER}/payments"),
        ("kafka-cluster:CreateTopic", f"{KAFKA}topic/{CLUSTER}/trading-signals"),
        ("kafka-cluster:DeleteTopic", f"{KAFKA}topic/{CLUSTER}/market-data"),
        ("kafka-cluster:AlterCluster", f"{KAFKA}cluster/{CLUSTER}"),
        ("kafka-cluster:Connect", f"{KAFKA}cluster/other/1111"),
        ("kafka-cluster:AlterGroup", f"{KAFKA}group/{CLUSTER}/billing-consumers"),
    ]
    for action, resource in can:
        assert allowed(msk, action, resource), f"{action} on {resource}"
    for action, resource in cannot:
        assert not allowed(msk, action, resource), f"{action} on {resource}"


def test_one_secret_and_its_key_through_secrets_manager_only():
    secret = load("msk-scram-secret.json")
    arn = "arn:aws:secretsmanager:us-east-1:111122223333:secret:AmazonMSK_marketsignals-"
    assert allowed(secret, "secretsmanager:GetSecretValue", arn + "a1B2c3")
    assert not allowed(secret, "secretsmanager:GetSecretValue", arn + "admin-a1B2c3")
    assert not allowed(secret, "secretsmanager:GetSecretValue",
                       "arn:aws:secretsmanager:us-east-1:111122223333:secret:AmazonMSK_payments-a1B2c3")
    assert not allowed(secret, "secretsmanager:PutSecretValue", arn + "a1B2c3")
    assert not allowed(secret, "secretsmanager:ListSecrets", "*")
    key = VALUES["<SECRET_KMS_KEY_ARN>"]
    assert allowed(secret, "kms:Decrypt", key, **{"kms:ViaService": "secretsmanager.us-east-1.amazonaws.com"})
    assert not allowed(secret, "kms:Decrypt", key)


def test_the_service_role_passes_only_the_instance_role_to_ec2_and_is_assumed_by_emr_only():
    service = load("emr-service-role-policy.json")
    role = "arn:aws:iam::111122223333:role/marketsignals-ec2"
    assert allowed(service, "iam:PassRole", role, **{"iam:PassedToService": "ec2.amazonaws.com"})
    assert not allowed(service, "iam:PassRole", "arn:aws:iam::111122223333:role/admin",
                       **{"iam:PassedToService": "ec2.amazonaws.com"})
    assert not allowed(service, "iam:PassRole", role, **{"iam:PassedToService": "lambda.amazonaws.com"})
    trust = {p.name: load(p.name)["Statement"][0] for p in IAM.glob("*-trust.json")}
    assert trust["emr-service-role-trust.json"]["Principal"] == {"Service": "elasticmapreduce.amazonaws.com"}
    assert trust["emr-ec2-instance-role-trust.json"]["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert trust["emr-serverless-job-role-trust.json"]["Principal"] == {"Service": "emr-serverless.amazonaws.com"}
    for name in ("emr-service-role-trust.json", "emr-serverless-job-role-trust.json"):
        assert trust[name]["Condition"]["StringEquals"]["aws:SourceAccount"] == "111122223333", name
    assert trust["emr-eks-job-role-trust.json"]["Action"] == "sts:AssumeRoleWithWebIdentity"


def test_the_deployment_profile_buckets_match_the_policy_prefixes():
    """The S3 prefixes the job policy grants are the ones conf/emr/deploy.yaml writes to."""
    import yaml

    deploy = yaml.safe_load((ROOT / "conf" / "emr" / "deploy.yaml").read_text())
    prefixes = {v.split("{data_bucket}/", 1)[1] for v in deploy["app_settings"].values()
                if isinstance(v, str) and "{data_bucket}/" in v}
    assert prefixes
    job = Path(IAM / "marketsignals-job-policy.json").read_text()
    for prefix in prefixes:
        top = "/".join(prefix.split("/")[:2])
        assert f"<DATA_BUCKET>/{top}/*" in job, f"the job policy does not cover s3://<DATA_BUCKET>/{prefix}"
    assert deploy["s3"]["artifact_prefix"] == "marketsignals/artifacts"
    assert deploy["s3"]["log_uri"].endswith("/marketsignals/logs/")
