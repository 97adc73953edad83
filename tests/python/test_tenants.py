"""Each tenant boundary of a secure farm, walked by a client that is not
Bazel, asserting the exact status code (and the refusal's words).

Run by tests/python.rs against `corral up --secure` with a grants file
naming two tenants by their tokens' `sub` (tenant-a on instance name
tenant-a, tenant-b on tenant-b: execute, cas-read, cas-write, ac-read,
operations-own, sandbox policy default), the farm's own worker (by its
certificate, CN corral-up-worker) and rogue-worker (a token with the
worker permission). The Rust side mints the tokens and a client
certificate from another CA and passes them in CORRAL_TEST_* variables.
"""

import os
import unittest

import grpc

import reapi_client as reapi
from build.bazel.remote.execution.v2 import remote_execution_subset_pb2 as re_pb2
from buildbarn import buildqueuestate_pb2, buildqueuestate_pb2_grpc
from buildbarn import remoteworker_pb2, remoteworker_pb2_grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2
from reapi_client import Stage

SH = "/bin/sh"
TENANT_A = "tenant-a"
TENANT_B = "tenant-b"

# Long enough for the other tenant's calls and the forgeries to happen
# while the action runs; short enough to keep the suite quick.
SLEEP = "sleep 3"


def variable(name):
    value = os.environ.get(name)
    if not value:
        raise AssertionError(f"{name} is not set: run through tests/python.rs")
    return value


def read(path):
    with open(path, "rb") as f:
        return f.read()


def worker_hostname():
    """The `hostname` entry of the farm's worker ids: the worker reads it
    from here (worker/src/lib.rs), and runs on this machine."""
    with open("/proc/sys/kernel/hostname") as f:
        return f.read().strip()


def denied(caller, permission, instance):
    return f'{caller} lacks {permission} on instance name "{instance}"'


def denied_everywhere(caller, permission):
    """The refusal of a call that reaches every worker (the empty
    instance name prefix)."""
    return f'{caller} lacks {permission} on every instance name starting with ""'


class SecureFarmTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.endpoint = variable("CORRAL_TEST_ENDPOINT")
        cls.ca = read(variable("CORRAL_TEST_CA"))
        cls.tokens = {
            name: variable(f"CORRAL_TEST_TOKEN_{name.upper().replace('-', '_')}")
            for name in ("tenant-a", "tenant-b", "rogue-worker", "expired", "other-audience", "other-key")
        }
        cls.worker_slots = int(variable("CORRAL_TEST_WORKER_SLOTS"))

    def setUp(self):
        self.salt = os.urandom(16)
        self.channels = []

    def tearDown(self):
        for channel in self.channels:
            channel.close()

    def tls(self, certificate=None, key=None):
        """TLS trusting the farm's CA, showing a client certificate when
        given one."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=key and read(key),
            certificate_chain=certificate and read(certificate),
        )

    def client(self, token=None, instance_name="", credentials=None):
        """A REAPI client over TLS presenting `token` (a key of
        self.tokens) on `instance_name`."""
        metadata = reapi.bearer(self.tokens[token]) if token else ()
        client = reapi.Client(self.endpoint, credentials or self.tls(), metadata, instance_name)
        self.channels.append(client.channel)
        return client

    def tenant(self, name):
        return self.client(name, instance_name=name)

    def stub(self, stub_class, token):
        channel = reapi.channel(self.endpoint, self.tls())
        self.channels.append(channel)
        return stub_class(channel), reapi.bearer(self.tokens[token])

    def prepare(self, script, **kwargs):
        return reapi.prepare([SH, "-c", script], salt=self.salt, **kwargs)

    def assert_refused(self, call, code, message):
        """`call()` fails with exactly `code`, saying `message`. (A
        streaming call fails when read: `call` reads it.)"""
        with self.assertRaises(grpc.RpcError) as caught:
            call()
        error = caught.exception
        self.assertEqual(error.code(), code, error.details())
        self.assertEqual(error.details(), message)

    def start(self, client, prepared):
        """Uploads and executes `prepared`; returns the operation's name
        and the rest of its Execute stream, once it is executing."""
        client.upload(*prepared.blobs())
        stream = iter(client.execute_call(prepared.action_digest, skip_cache_lookup=True))
        for operation in stream:
            stage = reapi.metadata(operation).stage
            if operation.done:
                self.fail(f"the action finished before the test could act on it: {operation}")
            if stage == Stage.EXECUTING:
                return operation.name, stream
        self.fail("the Execute stream ended before the action ran")

    def finish(self, stream):
        operations = list(stream)
        self.assertTrue(operations and operations[-1].done, operations)
        return reapi.response(operations[-1])

    def listed(self, token):
        stub, metadata = self.stub(operations_pb2_grpc.OperationsStub, token)
        response = stub.ListOperations(
            operations_pb2.ListOperationsRequest(), timeout=reapi.CALL_TIMEOUT_S, metadata=metadata
        )
        return response.operations


class OwnWork(SecureFarmTest):
    def test_a_tenant_runs_an_action_and_reads_its_own_operation(self):
        a = self.tenant(TENANT_A)
        prepared = self.prepare(f"echo hello {self.salt.hex()}")
        a.upload(*prepared.blobs())
        operations = a.execute(prepared.action_digest)
        response = reapi.response(operations[-1])
        self.assertEqual(response.status.code, reapi.OK, response.status)
        self.assertEqual(response.result.exit_code, 0)
        stdout = response.result.stdout_raw or a.read(response.result.stdout_digest)
        self.assertEqual(stdout, f"hello {self.salt.hex()}\n".encode())

        name = operations[-1].name
        stub, metadata = self.stub(operations_pb2_grpc.OperationsStub, TENANT_A)
        own = stub.GetOperation(
            operations_pb2.GetOperationRequest(name=name), timeout=reapi.CALL_TIMEOUT_S, metadata=metadata
        )
        self.assertTrue(own.done)
        self.assertEqual(reapi.response(own).result.exit_code, 0)
        self.assertIn(name, [o.name for o in self.listed(TENANT_A)])
        # The worker wrote the result to the Action Cache, where the
        # tenant reads it.
        self.assertEqual(a.get_action_result(prepared.action_digest).exit_code, 0)


class ActionCache(SecureFarmTest):
    def test_a_tenant_may_not_write_the_action_cache(self):
        a = self.tenant(TENANT_A)
        prepared = self.prepare("true")
        a.upload(*prepared.blobs())
        poisoned = re_pb2.ActionResult(exit_code=0, stdout_raw=b"trust me\n")
        request = re_pb2.UpdateActionResultRequest(
            instance_name=TENANT_A, action_digest=prepared.action_digest, action_result=poisoned
        )
        self.assert_refused(
            lambda: a.ac.UpdateActionResult(request, timeout=reapi.CALL_TIMEOUT_S, metadata=a.metadata),
            grpc.StatusCode.PERMISSION_DENIED,
            denied("token:tenant-a", "ac-write", TENANT_A),
        )
        # Nothing was written: the tenant, who may read, finds no entry.
        with self.assertRaises(grpc.RpcError) as caught:
            a.get_action_result(prepared.action_digest)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND, caught.exception.details())


class OtherTenantsOperations(SecureFarmTest):
    def test_a_tenant_may_not_read_wait_on_or_cancel_another_tenants_operation(self):
        a = self.tenant(TENANT_A)
        name, stream = self.start(a, self.prepare(f"{SLEEP}; echo done"))
        b_ops, b = self.stub(operations_pb2_grpc.OperationsStub, TENANT_B)
        refusal = denied("token:tenant-b", "operations-all", TENANT_A)
        self.assert_refused(
            lambda: b_ops.GetOperation(
                operations_pb2.GetOperationRequest(name=name), timeout=reapi.CALL_TIMEOUT_S, metadata=b
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            refusal,
        )
        b_client = self.tenant(TENANT_B)
        self.assert_refused(
            lambda: list(b_client.wait_execution(name)), grpc.StatusCode.PERMISSION_DENIED, refusal
        )
        self.assert_refused(
            lambda: b_ops.CancelOperation(
                operations_pb2.CancelOperationRequest(name=name), timeout=reapi.CALL_TIMEOUT_S, metadata=b
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            refusal,
        )
        self.assertNotIn(name, [o.name for o in self.listed(TENANT_B)])
        self.assertIn(name, [o.name for o in self.listed(TENANT_A)])

        # Untouched by the refused cancel: it runs to its end.
        response = self.finish(stream)
        self.assertEqual(response.status.code, reapi.OK, response.status)
        self.assertEqual(response.result.exit_code, 0)


class Administration(SecureFarmTest):
    def test_a_tenant_may_not_drain_or_terminate_workers(self):
        admin, a = self.stub(buildqueuestate_pb2_grpc.BuildQueueStateStub, TENANT_A)
        pattern = {"hostname": worker_hostname()}
        own_queue = buildqueuestate_pb2.SizeClassQueueName(
            platform_queue_name=buildqueuestate_pb2.PlatformQueueName(
                instance_name_prefix=TENANT_A, platform=re_pb2.Platform()
            )
        )
        for queue, refusal in [
            (own_queue, denied("token:tenant-a", "admin", TENANT_A)),
            (None, denied_everywhere("token:tenant-a", "admin")),
        ]:
            request = buildqueuestate_pb2.AddOrRemoveDrainRequest(
                size_class_queue_name=queue, worker_id_pattern=pattern
            )
            self.assert_refused(
                lambda: admin.AddDrain(request, timeout=reapi.CALL_TIMEOUT_S, metadata=a),
                grpc.StatusCode.PERMISSION_DENIED,
                refusal,
            )
        self.assert_refused(
            lambda: admin.TerminateWorkers(
                buildqueuestate_pb2.TerminateWorkersRequest(worker_id_pattern=pattern),
                timeout=reapi.CALL_TIMEOUT_S,
                metadata=a,
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            denied_everywhere("token:tenant-a", "admin"),
        )
        # The workers still serve: an action runs.
        client = self.tenant(TENANT_A)
        prepared = self.prepare("true")
        client.upload(*prepared.blobs())
        response = reapi.response(client.execute(prepared.action_digest)[-1])
        self.assertEqual(response.status.code, reapi.OK, response.status)


class SandboxPolicies(SecureFarmTest):
    def test_a_policy_not_granted_is_refused_and_nothing_runs(self):
        a = self.tenant(TENANT_A)
        prepared = self.prepare(f"echo reached the network {self.salt.hex()}", platform={"corral-policy": "network"})
        a.upload(*prepared.blobs())
        self.assert_refused(
            lambda: a.execute(prepared.action_digest),
            grpc.StatusCode.PERMISSION_DENIED,
            'token:tenant-a may not use sandbox policy "network" (corral-policy) on instance name "tenant-a"',
        )
        # Never queued: no operation of the tenant's names the action,
        # and no result of it was cached.
        asked = [reapi.metadata(o).action_digest.hash for o in self.listed(TENANT_A)]
        self.assertNotIn(prepared.action_digest.hash, asked)
        with self.assertRaises(grpc.RpcError) as caught:
            a.get_action_result(prepared.action_digest)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)


class Workers(SecureFarmTest):
    def synchronize(self, token, slot, state):
        queue, metadata = self.stub(remoteworker_pb2_grpc.OperationQueueStub, token)
        request = remoteworker_pb2.SynchronizeRequest(
            worker_id={"hostname": worker_hostname(), "slot": str(slot)},
            instance_name_prefix="",
            platform=re_pb2.Platform(),
            current_state=state,
        )
        return lambda: queue.Synchronize(request, timeout=reapi.CALL_TIMEOUT_S, metadata=metadata)

    def test_a_forged_worker_cannot_complete_another_workers_action(self):
        a = self.tenant(TENANT_A)
        prepared = self.prepare(f"{SLEEP}; echo the real result")
        _, stream = self.start(a, prepared)
        # A result reported as Buildbarn's workers report one: executing,
        # stage completed.
        forged = remoteworker_pb2.CurrentState(
            executing=remoteworker_pb2.CurrentState.Executing(
                action_digest=prepared.action_digest,
                completed=re_pb2.ExecuteResponse(
                    result=re_pb2.ActionResult(exit_code=66, stdout_raw=b"forged\n")
                ),
            )
        )
        idle = remoteworker_pb2.CurrentState(idle=empty_pb2.Empty())
        refusal = "token:rogue-worker may not synchronize as this worker id: another identity does"
        # The action runs on one of the farm's slots, each bound to the
        # farm's worker since its first Synchronize: every one refuses
        # the forger, whether it reports the result or claims to be idle
        # (which would take the action away from the real slot).
        for slot in range(self.worker_slots):
            for state in (forged, idle):
                self.assert_refused(
                    self.synchronize("rogue-worker", slot, state), grpc.StatusCode.PERMISSION_DENIED, refusal
                )
        # A tenant holds no worker permission at all.
        self.assert_refused(
            self.synchronize(TENANT_A, 0, forged),
            grpc.StatusCode.PERMISSION_DENIED,
            denied_everywhere("token:tenant-a", "worker"),
        )

        response = self.finish(stream)
        self.assertEqual(response.status.code, reapi.OK, response.status)
        self.assertEqual(response.result.exit_code, 0)
        stdout = response.result.stdout_raw or a.read(response.result.stdout_digest)
        self.assertEqual(stdout, b"the real result\n")


class Authentication(SecureFarmTest):
    def find_missing(self, client):
        return lambda: client.find_missing([reapi.digest_of(self.salt)])

    def test_bad_tokens_are_unauthenticated(self):
        for token, message in [
            ("expired", "the bearer token has expired"),
            ("other-audience", "the bearer token is for another audience"),
            ("other-key", "the bearer token's signature does not verify"),
        ]:
            with self.subTest(token=token):
                self.assert_refused(
                    self.find_missing(self.client(token, instance_name=TENANT_A)),
                    grpc.StatusCode.UNAUTHENTICATED,
                    message,
                )
        self.assert_refused(
            self.find_missing(self.client(instance_name=TENANT_A)),
            grpc.StatusCode.UNAUTHENTICATED,
            "no credentials: present a client certificate or a bearer token",
        )
        # The same call with the tenant's own token is answered.
        self.assertEqual(len(self.client(TENANT_A, instance_name=TENANT_A).find_missing([reapi.digest_of(self.salt)])), 1)

    def test_a_client_certificate_from_another_ca_fails_the_handshake(self):
        credentials = self.tls(variable("CORRAL_TEST_OTHER_CA_CERT"), variable("CORRAL_TEST_OTHER_CA_KEY"))
        # Even with a good token: the connection never gets that far.
        client = self.client(TENANT_A, instance_name=TENANT_A, credentials=credentials)
        with self.assertRaises(grpc.RpcError) as caught:
            self.find_missing(client)()
        error = caught.exception
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE, error.details())
        self.assert_handshake_failure(error.details())

        # The farm's own client certificate passes the handshake and
        # names its holder, who has no grant on the tenant's name.
        credentials = self.tls(variable("CORRAL_TEST_CLIENT_CERT"), variable("CORRAL_TEST_CLIENT_KEY"))
        client = self.client(instance_name=TENANT_A, credentials=credentials)
        with self.assertRaises(grpc.RpcError) as caught:
            self.find_missing(client)()
        self.assertEqual(caught.exception.code(), grpc.StatusCode.PERMISSION_DENIED, caught.exception.details())
        self.assertIn("corral-up-client lacks cas-read", caught.exception.details())

    def test_a_client_trusting_another_ca_refuses_the_farm(self):
        credentials = grpc.ssl_channel_credentials(root_certificates=read(variable("CORRAL_TEST_OTHER_CA")))
        client = self.client(TENANT_A, instance_name=TENANT_A, credentials=credentials)
        with self.assertRaises(grpc.RpcError) as caught:
            self.find_missing(client)()
        error = caught.exception
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE, error.details())
        self.assert_handshake_failure(error.details())

    def assert_handshake_failure(self, details):
        """The failure is the TLS layer's. With TLS 1.3 the client's side
        of the handshake is over before the server checks its certificate,
        so grpcio may see the server's alert as a failed handshake or as
        an undecryptable record of its TLS layer (TSI): either names it."""
        words = ("handshake", "ssl", "tls", "tsi_")
        self.assertTrue(any(w in details.lower() for w in words), f"not a TLS failure: {details}")
        print(f"refused at the handshake: {details}")

    def test_plaintext_to_the_tls_port_is_unavailable(self):
        channel = reapi.channel(self.endpoint)
        self.channels.append(channel)
        cas = reapi.re_grpc.ContentAddressableStorageStub(channel)
        with self.assertRaises(grpc.RpcError) as caught:
            cas.FindMissingBlobs(
                re_pb2.FindMissingBlobsRequest(instance_name=TENANT_A),
                timeout=reapi.CALL_TIMEOUT_S,
                metadata=reapi.bearer(self.tokens[TENANT_A]),
            )
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE, caught.exception.details())


if __name__ == "__main__":
    unittest.main()
