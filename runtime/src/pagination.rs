//! Pagination shared by every list endpoint: page-numbered lists
//! (`items, total, page, page_size, has_more`) and cursor lists for messages.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{Error, Result};

/// Default number of items on a page.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: u32 = 100;

/// `?page=&page_size=` as sent by the client.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub page_size: Option<u32>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// 1-based page number.
    pub page: u32,
    /// Items per page.
    pub page_size: u32,
}

impl PageParams {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<PageRequest> {
        let page = self.page.unwrap_or(1);
        let page_size = self.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if page == 0 || page > 1_000_000 {
            return Err(Error::invalid_field(
                "page",
                "must be between 1 and 1000000",
            ));
        }
        if page_size == 0 || page_size > MAX_PAGE_SIZE {
            return Err(Error::invalid_field(
                "page_size",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        Ok(PageRequest { page, page_size })
    }
}

impl PageRequest {
    /// Rows to skip.
    pub fn offset(&self) -> i64 {
        (self.page as i64 - 1) * self.page_size as i64
    }

    /// Rows to fetch.
    pub fn limit(&self) -> i64 {
        self.page_size as i64
    }

    /// Wraps one page of `items` out of `total`.
    pub fn wrap<T>(&self, items: Vec<T>, total: i64) -> Page<T> {
        let total = total.max(0) as u64;
        let seen = self.offset() as u64 + items.len() as u64;
        Page {
            items,
            total,
            page: self.page,
            page_size: self.page_size,
            has_more: seen < total,
        }
    }
}

/// One page of a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items on this page.
    pub items: Vec<T>,
    /// Items in the whole list.
    pub total: u64,
    /// This page's number, from 1.
    pub page: u32,
    /// The page size used.
    pub page_size: u32,
    /// Whether a later page holds more items.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Converts every item.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            total: self.total,
            page: self.page,
            page_size: self.page_size,
            has_more: self.has_more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_enforced() {
        let p = |page, page_size| PageParams { page, page_size }.validate();
        assert!(p(Some(0), None).is_err());
        assert!(p(None, Some(0)).is_err());
        assert!(p(None, Some(101)).is_err());
        assert_eq!(
            p(None, None).unwrap(),
            PageRequest {
                page: 1,
                page_size: 20
            }
        );
        assert_eq!(p(Some(3), Some(10)).unwrap().offset(), 20);
    }

    #[test]
    fn has_more_is_exact_at_the_edges() {
        let req = PageRequest {
            page: 2,
            page_size: 2,
        };
        assert!(!req.wrap(vec![1, 2], 4).has_more);
        assert!(req.wrap(vec![1, 2], 5).has_more);
        assert!(
            !PageRequest {
                page: 9,
                page_size: 2
            }
            .wrap(Vec::<u8>::new(), 4)
            .has_more
        );
    }
}
