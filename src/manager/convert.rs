//! Conversions between the client API's protobuf messages and the store's own types.

use shoal_proto::v1 as pb;
use shoal_raft::Compare;
use shoal_raft::CompareOp;
use shoal_raft::CompareTarget;
use shoal_raft::Delete;
use shoal_raft::Event;
use shoal_raft::EventKind;
use shoal_raft::KeyValue;
use shoal_raft::Op;
use shoal_raft::OpResponse;
use shoal_raft::Put;
use shoal_raft::Range;
use shoal_raft::RangeResult;
use tonic::Status;

pub(crate) fn kv(kv: KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
        flags: kv.flags,
        lock: kv.lock,
        lock_index: kv.lock_index,
    }
}

pub(crate) fn range(r: pb::RangeRequest) -> Range {
    Range {
        key: r.key,
        prefix: r.prefix,
        limit: r.limit,
        keys_only: r.keys_only,
        count_only: r.count_only,
    }
}

pub(crate) fn put(p: pb::PutRequest) -> Put {
    Put {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        flags: p.flags,
        ..Default::default()
    }
}

pub(crate) fn delete(d: pb::DeleteRequest) -> Delete {
    Delete {
        key: d.key,
        prefix: d.prefix,
        prev_kv: d.prev_kv,
    }
}

pub(crate) fn range_response(header: pb::Header, r: RangeResult) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(kv).collect(),
        more: r.more,
        count: r.count,
    }
}

pub(crate) fn compare(c: pb::Compare) -> Result<Compare, Status> {
    use pb::compare::Op as PbOp;
    use pb::compare::Target;
    let target = Target::try_from(c.target)
        .map_err(|_| Status::invalid_argument(format!("unknown compare target {}", c.target)))?;
    let op = PbOp::try_from(c.op)
        .map_err(|_| Status::invalid_argument(format!("unknown compare op {}", c.op)))?;
    Ok(Compare {
        key: c.key,
        target: match target {
            Target::Value => CompareTarget::Value(c.value),
            Target::ModRevision => CompareTarget::ModRevision(c.number),
            Target::CreateRevision => CompareTarget::CreateRevision(c.number),
            Target::Version => CompareTarget::Version(c.number),
            Target::Exists => CompareTarget::Exists(c.exists),
        },
        op: match op {
            PbOp::Equal => CompareOp::Equal,
            PbOp::NotEqual => CompareOp::NotEqual,
            PbOp::Less => CompareOp::Less,
            PbOp::Greater => CompareOp::Greater,
        },
    })
}

pub(crate) fn txn(t: pb::TxnRequest) -> Result<shoal_raft::Txn, Status> {
    Ok(shoal_raft::Txn {
        compare: t
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: t.success.into_iter().map(op).collect::<Result<_, _>>()?,
        failure: t.failure.into_iter().map(op).collect::<Result<_, _>>()?,
    })
}

pub(crate) fn op(o: pb::RequestOp) -> Result<Op, Status> {
    use pb::request_op::Request as R;
    match o.request {
        Some(R::Range(r)) => Ok(Op::Range(range(r))),
        Some(R::Put(p)) => Ok(Op::Put(put(p))),
        Some(R::Delete(d)) => Ok(Op::Delete(delete(d))),
        None => Err(Status::invalid_argument(
            "transaction operation without a request",
        )),
    }
}

pub(crate) fn op_response(header: &pb::Header, r: OpResponse) -> pb::ResponseOp {
    use pb::response_op::Response as R;
    let response = match r {
        OpResponse::Range(r) => R::Range(range_response(*header, r)),
        OpResponse::Put { prev_kv } => R::Put(pb::PutResponse {
            header: Some(*header),
            prev_kv: prev_kv.map(kv),
        }),
        OpResponse::Delete { deleted, prev_kvs } => R::Delete(pb::DeleteResponse {
            header: Some(*header),
            deleted,
            prev_kvs: prev_kvs.into_iter().map(kv).collect(),
        }),
    };
    pb::ResponseOp {
        response: Some(response),
    }
}

pub(crate) fn event(e: Event) -> pb::Event {
    pb::Event {
        r#type: match e.kind {
            EventKind::Put => pb::event::EventType::Put as i32,
            EventKind::Delete => pb::event::EventType::Delete as i32,
        },
        kv: Some(kv(e.kv)),
        prev_kv: e.prev_kv.map(kv),
    }
}
