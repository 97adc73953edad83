//! The scheduler's access rules, on top of the grants an [`Authorizer`]
//! answers from: who may watch or cancel an operation, and what a
//! permission over a worker's instance name prefix means.
//!
//! - An operation is seen (GetOperation, WaitOperation, WaitExecution,
//!   ListOperations) by a caller with `operations-all` on its instance
//!   name, or by one of the callers that started it (Execute, including
//!   an Execute that joined an identical action in flight) holding
//!   `operations-own` or `execute` there. `execute` is enough for one's
//!   own operations because Bazel calls WaitExecution, with nothing but
//!   its execute rights, whenever an Execute stream drops.
//! - An operation is cancelled by a caller with `operations-all`, or by
//!   one that started it holding `operations-own`, provided nobody else
//!   shares it: cancelling a shared operation ends it for the others too,
//!   which only `operations-all` may do.
//! - A worker announcing instance name prefix `P` serves `P` and every
//!   name under `P/` (every name when `P` is empty): a permission over
//!   its workers (admin for drains, worker to synchronize) is one over
//!   all of those names.
//! - GetCapabilities needs no permission: it says nothing about any
//!   tenant, and clients call it before anything else.

use corral_auth::{Authorizer, Caller, Permission};
use tonic::Status;

use crate::operation::Operation;

/// Ok if `caller` may see `operation`; else PERMISSION_DENIED naming the
/// permission it lacks and the instance name.
pub fn check_watch(
    authorizer: &Authorizer,
    caller: &Caller,
    operation: &Operation,
) -> Result<(), Status> {
    let instance = operation.instance_name();
    if authorizer.allows(caller, Permission::OperationsAll, instance) {
        return Ok(());
    }
    if !operation.is_owned_by(caller.name()) {
        return authorizer.check(caller, Permission::OperationsAll, instance);
    }
    if authorizer.allows(caller, Permission::Execute, instance) {
        return Ok(());
    }
    authorizer.check(caller, Permission::OperationsOwn, instance)
}

/// Whether `caller` may see `operation`, for ListOperations, which leaves
/// out what the caller may not see.
pub fn may_watch(authorizer: &Authorizer, caller: &Caller, operation: &Operation) -> bool {
    check_watch(authorizer, caller, operation).is_ok()
}

/// Ok if `caller` may cancel `operation`; else PERMISSION_DENIED naming
/// the permission it lacks and the instance name.
pub fn check_cancel(
    authorizer: &Authorizer,
    caller: &Caller,
    operation: &Operation,
) -> Result<(), Status> {
    let instance = operation.instance_name();
    if authorizer.allows(caller, Permission::OperationsAll, instance) {
        return Ok(());
    }
    if !operation.is_owned_by(caller.name()) {
        return authorizer.check(caller, Permission::OperationsAll, instance);
    }
    authorizer.check(caller, Permission::OperationsOwn, instance)?;
    if operation.owner_count() > 1 {
        return Err(Status::permission_denied(format!(
            "{caller} shares {} with other callers; cancelling it for them too needs {} on instance name {instance:?}",
            operation.name(),
            Permission::OperationsAll
        )));
    }
    Ok(())
}

/// Ok if `caller` holds `permission` on every instance name a worker
/// announcing `prefix` serves: `prefix` itself and every name under
/// `prefix/`, or every name at all for the empty prefix.
pub fn check_worker_prefix(
    authorizer: &Authorizer,
    caller: &Caller,
    permission: Permission,
    prefix: &str,
) -> Result<(), Status> {
    if prefix.is_empty() {
        return authorizer.check_prefix(caller, permission, "");
    }
    authorizer.check(caller, permission, prefix)?;
    authorizer.check_prefix(caller, permission, &format!("{prefix}/"))
}

#[cfg(test)]
mod tests {
    use corral_auth::caller::TokenIdentity;
    use corral_auth::Grants;
    use corral_proto::reapi::Digest;

    use super::*;

    fn caller(sub: &str) -> Caller {
        let claims = serde_json::json!({ "sub": sub });
        Caller::from_token(TokenIdentity {
            subject: Some(sub.to_owned()),
            issuer: "test".to_owned(),
            claims: claims.as_object().cloned().unwrap_or_default(),
        })
    }

    fn authorizer() -> Authorizer {
        Authorizer::with_grants(
            Grants::parse(
                r#"
                [[grant]]
                who = ["claim:sub=bazel", "claim:sub=other"]
                instance_names = ["a"]
                permissions = ["execute"]

                [[grant]]
                who = ["claim:sub=own"]
                instance_names = ["a"]
                permissions = ["operations-own"]

                [[grant]]
                who = ["claim:sub=ops"]
                instance_names = ["a"]
                permissions = ["operations-all"]

                [[grant]]
                who = ["claim:sub=team-admin"]
                instance_names = ["a", "a/*"]
                permissions = ["admin"]

                [[grant]]
                who = ["claim:sub=root"]
                instance_names = ["*"]
                permissions = ["admin"]
                "#,
            )
            .unwrap(),
        )
    }

    fn operation(instance: &str, owners: &[&str]) -> Operation {
        let op = Operation::new("operations/x".into(), instance.into(), Digest::default(), 1);
        for owner in owners {
            op.add_owner(&caller(owner).to_string());
        }
        op
    }

    fn denied(result: Result<(), Status>) -> String {
        let status = result.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        status.message().to_owned()
    }

    #[test]
    fn an_owner_with_execute_watches_its_own_operations_only() {
        let auth = authorizer();
        let mine = operation("a", &["bazel"]);
        check_watch(&auth, &caller("bazel"), &mine).unwrap();
        assert_eq!(
            denied(check_watch(&auth, &caller("other"), &mine)),
            "token:other lacks operations-all on instance name \"a\""
        );
        // Execute lets it watch, not cancel.
        assert_eq!(
            denied(check_cancel(&auth, &caller("bazel"), &mine)),
            "token:bazel lacks operations-own on instance name \"a\""
        );
        // Owners keep no rights on an instance name they lost.
        let elsewhere = operation("b", &["bazel"]);
        assert_eq!(
            denied(check_watch(&auth, &caller("bazel"), &elsewhere)),
            "token:bazel lacks operations-own on instance name \"b\""
        );
    }

    #[test]
    fn operations_own_cancels_what_nobody_else_shares_and_all_sees_everything() {
        let auth = authorizer();
        let alone = operation("a", &["own"]);
        check_cancel(&auth, &caller("own"), &alone).unwrap();
        let shared = operation("a", &["own", "bazel"]);
        check_watch(&auth, &caller("own"), &shared).unwrap();
        let refused = denied(check_cancel(&auth, &caller("own"), &shared));
        assert!(refused.contains("operations-all"), "{refused}");
        assert!(refused.contains("\"a\""), "{refused}");
        check_watch(&auth, &caller("ops"), &shared).unwrap();
        check_cancel(&auth, &caller("ops"), &shared).unwrap();
        assert!(!may_watch(&auth, &caller("ops"), &operation("b", &[])));
        let open = Authorizer::open();
        assert!(may_watch(&open, &Caller::anonymous(), &shared));
        check_cancel(&open, &Caller::anonymous(), &shared).unwrap();
    }

    #[test]
    fn a_worker_prefix_covers_itself_and_the_names_under_it() {
        let auth = authorizer();
        let team = caller("team-admin");
        check_worker_prefix(&auth, &team, Permission::Admin, "a").unwrap();
        check_worker_prefix(&auth, &team, Permission::Admin, "a/linux").unwrap();
        let whole = denied(check_worker_prefix(&auth, &team, Permission::Admin, ""));
        assert!(whole.contains("admin"), "{whole}");
        denied(check_worker_prefix(&auth, &team, Permission::Admin, "b"));
        check_worker_prefix(&auth, &caller("root"), Permission::Admin, "").unwrap();
        // Admin on the name alone does not reach the names under it.
        let ops = caller("ops");
        denied(check_worker_prefix(
            &auth,
            &ops,
            Permission::OperationsAll,
            "a",
        ));
    }
}
