//! Turning usage into money, without IO: billing windows ([`period`]), rating ([`rating`]),
//! currencies ([`money`]).

pub mod decimal;
pub mod money;
pub mod period;
pub mod rating;
