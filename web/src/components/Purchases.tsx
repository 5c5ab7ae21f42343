import { formatDateTime, purchaseStatusLabel } from "../format";
import { usePaged } from "../hooks";
import { creditsText, formatPrice } from "../money";
import type { PurchasePage } from "../types";
import { ErrorText, ExternalLink, Loading, Section, TableWrap } from "./common";
import { Pager } from "./Pager";

export function Purchases({
  refreshKey,
  packageNames,
}: {
  refreshKey: number;
  packageNames: Record<string, string>;
}) {
  const { page, cursor, stack, toOlder, toNewer } = usePaged<PurchasePage>(
    "checkout",
    "/api/purchases",
    refreshKey,
  );

  return (
    <Section title="Purchases" testId="purchases">
      {page.error ? (
        <ErrorText error={page.error} prefix="Your purchases could not be loaded." />
      ) : page.data === undefined ? (
        <Loading what="your purchases" />
      ) : page.data.purchases.length === 0 && cursor === null ? (
        <p className="muted">No purchases yet.</p>
      ) : (
        <TableWrap label="Purchases">
          <table data-testid="purchases-table" aria-busy={page.loading}>
            <caption>Your purchases, newest first</caption>
            <thead>
              <tr>
                <th scope="col">Date</th>
                <th scope="col">Package</th>
                <th scope="col" className="num">
                  Price
                </th>
                <th scope="col" className="num">
                  Credits
                </th>
                <th scope="col">Status</th>
                <th scope="col">Receipt</th>
              </tr>
            </thead>
            <tbody>
              {page.data.purchases.map((purchase) => {
                const when = formatDateTime(purchase.createdAt);
                const name = packageNames[purchase.packageCode] ?? purchase.packageCode;
                return (
                  <tr key={purchase.purchaseId}>
                    <th scope="row" className="nowrap">
                      {when}
                    </th>
                    <td>{name}</td>
                    <td className="num">{formatPrice(purchase.priceCents, purchase.currency)}</td>
                    <td className="num">{creditsText(purchase.grantMillicredits)}</td>
                    <td>{purchaseStatusLabel(purchase.status)}</td>
                    <td>
                      {purchase.receiptUrl ? (
                        <ExternalLink href={purchase.receiptUrl}>
                          Receipt
                          <span className="visually-hidden">
                            {" "}
                            for the {name} purchase of {when}
                          </span>
                        </ExternalLink>
                      ) : (
                        <span className="muted">Not yet</span>
                      )}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </TableWrap>
      )}
      <Pager
        stack={stack}
        nextCursor={page.data?.nextCursor}
        noun="purchases"
        testIdPrefix="purchases"
        onOlder={toOlder}
        onNewer={toNewer}
      />
    </Section>
  );
}
