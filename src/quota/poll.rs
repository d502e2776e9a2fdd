//! The budgeted poll of the usage endpoint.
