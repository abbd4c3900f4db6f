//! Export, import and copy of users' logs.
