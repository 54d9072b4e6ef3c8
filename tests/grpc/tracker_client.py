"""Tracker's gRPC lock calls made with grpcio (a client this project did not write), against
`pipeline-lock serve --grpc-listen`. Stubs are generated from the repo's .proto by
grpcio-tools at run time. Prints one JSON document of what the server answered; tests/serve_grpc.rs
checks it.

usage: tracker_client.py ADDRESS TOKEN SERVICE
"""
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stubs():
    out = tempfile.mkdtemp(prefix="tracker-grpc-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main([
        "grpc_tools.protoc",
        "-I" + os.path.join(ROOT, "proto"),
        "-I" + include,
        "--python_out=" + out,
        "--grpc_python_out=" + out,
        os.path.join(ROOT, "proto/tracker/lock/v1alpha1/lock.proto"),
    ])
    if code != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    from tracker.lock.v1alpha1 import lock_pb2, lock_pb2_grpc
    return lock_pb2, lock_pb2_grpc


def call(fn, request, metadata):
    try:
        return {"ok": fn(request, metadata=metadata, timeout=20)}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def lock(l):
    return {"id": l.id, "service": l.service, "who": l.who, "created_at": l.created_at.seconds}


def main():
    address, token, service = sys.argv[1:4]
    pb, pb_grpc = stubs()
    from google.protobuf import wrappers_pb2

    stub = pb_grpc.LockServiceStub(grpc.insecure_channel(address))
    auth = [("authorization", "Bearer " + token)]
    wrong = [("authorization", "Bearer not-the-token-0123456789")]
    out = {}
    out["unauthenticated"] = call(stub.CreateLock, pb.CreateLockRequest(service=service, who="x"), wrong)
    out["no_token_list"] = call(stub.ListLocks, pb.ListLocksRequest(), [])
    created = call(stub.CreateLock, pb.CreateLockRequest(service=service, who="ci-pipeline-123"), auth)
    out["create"] = {"lock": lock(created["ok"].lock)} if "ok" in created else created
    out["conflict"] = call(stub.CreateLock, pb.CreateLockRequest(service=service, who="other"), auth)
    lid = out["create"].get("lock", {}).get("id", "")
    got = call(stub.GetLock, pb.GetLockRequest(id=lid), auth)
    out["get"] = {"lock": lock(got["ok"].lock)} if "ok" in got else got
    listed = call(stub.ListLocks, pb.ListLocksRequest(per_page=wrappers_pb2.UInt32Value(value=1000), page=wrappers_pb2.Int32Value(value=1)), auth)
    out["list"] = {"ids": [l.id for l in listed["ok"].locks], "total_count": listed["ok"].total_count} if "ok" in listed else listed
    unlocked = call(stub.UnLock, pb.UnLockRequest(id=lid), auth)
    out["unlock"] = {"message": unlocked["ok"].message, "id": unlocked["ok"].id, "count": unlocked["ok"].count} if "ok" in unlocked else unlocked
    out["unlock_again"] = call(stub.UnLock, pb.UnLockRequest(id=lid), auth)
    out["get_after"] = call(stub.GetLock, pb.GetLockRequest(id=lid), auth)
    out["bad_id"] = call(stub.GetLock, pb.GetLockRequest(id="not-an-id"), auth)
    out["empty_service"] = call(stub.CreateLock, pb.CreateLockRequest(service="", who="x"), auth)
    out["control_who"] = call(stub.CreateLock, pb.CreateLockRequest(service=service, who="a\nb"), auth)
    out["huge"] = call(stub.CreateLock, pb.CreateLockRequest(service=service, who="w" * 100000), auth)
    out["bad_per_page"] = call(stub.ListLocks, pb.ListLocksRequest(per_page=wrappers_pb2.UInt32Value(value=0)), auth)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
