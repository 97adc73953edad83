//! The question every service asks before it acts: may this caller do
//! this on this instance name? One [`Authorizer`] per daemon, cloned into
//! each service.

use std::sync::Arc;

use tonic::Status;

use crate::caller::Caller;
use crate::grants::Grants;
use crate::permission::Permission;
use crate::quote::excerpt;

/// Answers permission questions from the grants file, or allows everything
/// when the daemon has none (a farm for one team, `corral up` on
/// loopback).
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    grants: Option<Arc<Grants>>,
}

impl Authorizer {
    /// Every caller may do everything.
    pub fn open() -> Self {
        Authorizer { grants: None }
    }

    /// Only what `grants` allows.
    pub fn with_grants(grants: Grants) -> Self {
        Authorizer {
            grants: Some(Arc::new(grants)),
        }
    }

    /// Whether every caller may do everything.
    pub fn is_open(&self) -> bool {
        self.grants.is_none()
    }

    /// Whether `caller` holds `permission` on `instance_name`.
    pub fn allows(&self, caller: &Caller, permission: Permission, instance_name: &str) -> bool {
        self.grants
            .as_ref()
            .is_none_or(|g| g.allows(caller, permission, instance_name))
    }

    /// PERMISSION_DENIED naming the permission and the instance name
    /// unless `caller` holds `permission` on `instance_name`.
    pub fn check(
        &self,
        caller: &Caller,
        permission: Permission,
        instance_name: &str,
    ) -> Result<(), Status> {
        if self.allows(caller, permission, instance_name) {
            Ok(())
        } else {
            Err(denied(caller, permission, instance_name))
        }
    }

    /// [`Authorizer::check`] for the caller of `request`, whom it returns.
    pub fn check_request<T>(
        &self,
        request: &tonic::Request<T>,
        permission: Permission,
        instance_name: &str,
    ) -> Result<Caller, Status> {
        let caller = Caller::of(request);
        self.check(&caller, permission, instance_name)?;
        Ok(caller)
    }

    /// PERMISSION_DENIED unless `caller` holds `permission` on every
    /// instance name that starts with `prefix`.
    pub fn check_prefix(
        &self,
        caller: &Caller,
        permission: Permission,
        prefix: &str,
    ) -> Result<(), Status> {
        let allowed = self
            .grants
            .as_ref()
            .is_none_or(|g| g.allows_prefix(caller, permission, prefix));
        if allowed {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{} lacks {permission} on every instance name starting with {:?}",
                excerpt(caller.name()),
                excerpt(prefix)
            )))
        }
    }

    /// PERMISSION_DENIED unless `caller` may ask for the sandbox policy
    /// `policy` (the `corral-policy` platform property) on `instance_name`.
    pub fn check_sandbox_policy(
        &self,
        caller: &Caller,
        instance_name: &str,
        policy: &str,
    ) -> Result<(), Status> {
        let allowed = self
            .grants
            .as_ref()
            .is_none_or(|g| g.allows_sandbox_policy(caller, instance_name, policy));
        if allowed {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{} may not use sandbox policy {:?} (corral-policy) on instance name {:?}",
                excerpt(caller.name()),
                excerpt(policy),
                excerpt(instance_name)
            )))
        }
    }
}

fn denied(caller: &Caller, permission: Permission, instance_name: &str) -> Status {
    Status::permission_denied(format!(
        "{} lacks {permission} on instance name {:?}",
        excerpt(caller.name()),
        excerpt(instance_name)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_farm_allows_everything_and_grants_refuse_with_the_permission_and_name() {
        let open = Authorizer::open();
        assert!(open
            .check(&Caller::anonymous(), Permission::Admin, "x")
            .is_ok());
        assert!(open
            .check_prefix(&Caller::anonymous(), Permission::Admin, "")
            .is_ok());
        assert!(open
            .check_sandbox_policy(&Caller::anonymous(), "", "network")
            .is_ok());

        let grants = Grants::parse(
            "[[grant]]\nwho=[\"anonymous\"]\ninstance_names=[\"\"]\npermissions=[\"ac-read\"]\nsandbox_policies=[\"default\"]",
        )
        .unwrap();
        let closed = Authorizer::with_grants(grants);
        let nobody = Caller::anonymous();
        assert!(closed.check(&nobody, Permission::AcRead, "").is_ok());
        let refused = closed.check(&nobody, Permission::AcWrite, "").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            refused.message(),
            "anonymous lacks ac-write on instance name \"\""
        );
        let refused = closed
            .check_sandbox_policy(&nobody, "", "network")
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("\"network\""),
            "{}",
            refused.message()
        );
        assert!(closed.check_sandbox_policy(&nobody, "", "default").is_ok());
        // A huge instance name is quoted cut, so the refusal still fits
        // the header it travels in.
        let huge = "x".repeat(100_000);
        let refused = closed
            .check(&nobody, Permission::AcRead, &huge)
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().len() < 400, "{}", refused.message().len());
    }
}
